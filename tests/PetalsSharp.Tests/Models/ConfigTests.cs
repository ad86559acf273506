using PetalsSharp.Models;
using Xunit;

namespace PetalsSharp.Tests.Models;

public sealed class ConfigTests
{
    [Fact]
    public void Absent_keys_take_transformers_defaults()
    {
        var c = (LlamaConfig)ModelConfigLoader.Parse("""{"model_type":"llama"}""");
        Assert.Equal(32000, c.VocabSize);
        Assert.Equal(4096, c.HiddenSize);
        Assert.Equal(11008, c.IntermediateSize);
        Assert.Equal(32, c.NumLayers);
        Assert.Equal(32, c.NumHeads);
        Assert.Equal(32, c.NumKvHeads);
        Assert.Equal(128, c.HeadDim);
        Assert.Equal(1e-6, c.RmsNormEps);
        Assert.Equal(10000.0, c.RopeTheta);
        Assert.Null(c.RopeScaling);
        Assert.Equal(2048, c.MaxPositionEmbeddings);
        Assert.False(c.TieWordEmbeddings);
        Assert.False(c.AttentionBias);
        Assert.False(c.MlpBias);
        Assert.Equal(1, c.BosTokenId);
        Assert.Equal([2], c.EosTokenIds);
    }

    [Fact]
    public void Fixture_config_reads_as_written()
    {
        var c = (LlamaConfig)ModelConfigLoader.Load(TestData.Path("llama-gqa"));
        Assert.Equal((320, 64, 176, 3, 4, 2, 16), (c.VocabSize, c.HiddenSize, c.IntermediateSize, c.NumLayers, c.NumHeads, c.NumKvHeads, c.HeadDim));
        Assert.Equal(1e-5, c.RmsNormEps);
        Assert.Equal(2, c.KvGroups);
    }

    [Fact]
    public void Llama3_style_eos_list_and_explicit_head_dim()
    {
        var c = (LlamaConfig)ModelConfigLoader.Parse("""{"model_type":"llama","hidden_size":64,"num_attention_heads":4,"head_dim":32,"eos_token_id":[128001,128009],"tie_word_embeddings":true}""");
        Assert.Equal([128001, 128009], c.EosTokenIds);
        Assert.Equal(32, c.HeadDim);
        Assert.True(c.TieWordEmbeddings);
    }

    [Fact]
    public void Mistral_and_Qwen2_take_transformers_defaults_for_absent_keys()
    {
        var mistral = (MistralConfig)ModelConfigLoader.Parse("""{"model_type":"mistral"}""");
        Assert.Equal((4096, 8, 14336, 1e-6, 10000.0), (mistral.SlidingWindow!.Value, mistral.NumKvHeads, mistral.IntermediateSize, mistral.RmsNormEps, mistral.RopeTheta));
        Assert.Equal((1, 2), (mistral.BosTokenId!.Value, mistral.EosTokenIds.Single()));
        // Mistral 7B v0.2 and later write "sliding_window": null: no window at all.
        Assert.Null(ModelConfigLoader.Parse("""{"model_type":"mistral","sliding_window":null}""").AttentionWindow);

        var qwen = (Qwen2Config)ModelConfigLoader.Parse("""{"model_type":"qwen2"}""");
        Assert.Equal((151936, 32, 22016, 32768), (qwen.VocabSize, qwen.NumKvHeads, qwen.IntermediateSize, qwen.MaxPositionEmbeddings));
        Assert.Null(qwen.BosTokenId);
        Assert.Empty(qwen.EosTokenIds);
        // Qwen2.5 checkpoints carry a window size with the window off: no layer slides.
        var qwen25 = ModelConfigLoader.Parse("""{"model_type":"qwen2","use_sliding_window":false,"sliding_window":131072,"max_window_layers":21}""");
        Assert.Null(qwen25.AttentionWindow);
    }

    [Theory]
    [InlineData("mistral")]
    [InlineData("qwen2")]
    public void Mistral_and_Qwen2_fixture_configs_round_trip_through_HF_json(string fixture)
    {
        var c = ModelConfigLoader.Load(TestData.Path(fixture));
        var again = ModelConfigLoader.Parse(c.ToHfJson().ToJsonString());
        Assert.Equal(c.EosTokenIds, again.EosTokenIds);
        Assert.Equal(c with { EosTokenIds = [] }, again with { EosTokenIds = [] });
    }

    [Fact]
    public void Config_round_trips_through_HF_json()
    {
        var c = ModelConfigLoader.Load(TestData.Path("llama-gqa"));
        var again = ModelConfigLoader.Parse(c.ToHfJson().ToJsonString());
        Assert.Equal(c.EosTokenIds, again.EosTokenIds);
        Assert.Equal(c with { EosTokenIds = [] }, again with { EosTokenIds = [] });
    }

    [Theory]
    [InlineData("""{"model_type":"gpt9"}""", "unsupported model_type 'gpt9'")]
    [InlineData("""{"hidden_size":64}""", "missing model_type")]
    [InlineData("""{"model_type":"llama",""", "malformed JSON")]
    [InlineData("""[1,2]""", "expected a JSON object")]
    [InlineData("""{"model_type":"llama","hidden_size":"big"}""", "'hidden_size' must be an integer")]
    [InlineData("""{"model_type":"llama","num_attention_heads":6,"num_key_value_heads":4}""", "must be a multiple of num_key_value_heads")]
    [InlineData("""{"model_type":"llama","hidden_size":-5}""", "hidden_size must be positive")]
    [InlineData("""{"model_type":"llama","hidden_act":"gelu"}""", "hidden_act 'gelu' is not supported")]
    [InlineData("""{"model_type":"llama","tie_word_embeddings":"yes"}""", "'tie_word_embeddings' must be true or false")]
    [InlineData("""{"model_type":"qwen2","use_sliding_window":true,"sliding_window":4096,"max_window_layers":21}""",
        "use_sliding_window true is not supported for qwen2 (sliding-window attention on layers 21 and up, window 4096)")]
    [InlineData("""{"model_type":"mistral","sliding_window":0}""", "sliding_window must be positive or null (got 0)")]
    public void Bad_configs_get_errors_that_name_the_problem(string json, string expected)
    {
        var e = Assert.Throws<ConfigException>(() => ModelConfigLoader.Parse(json, "/models/x/config.json"));
        Assert.Contains(expected, e.Message);
        Assert.Contains("/models/x/config.json", e.Message);
    }

    [Fact]
    public void Missing_folder_or_config_is_named()
    {
        var dir = Directory.CreateTempSubdirectory().FullName;
        var e = Assert.Throws<ConfigException>(() => ModelConfigLoader.Load(dir));
        Assert.Contains(Path.Combine(dir, "config.json"), e.Message);
        e = Assert.Throws<ConfigException>(() => ModelConfigLoader.Load(Path.Combine(dir, "nope")));
        Assert.Contains("not found", e.Message);
    }
}
