using PetalsSharp.Models;
using Xunit;

namespace PetalsSharp.Tests.Models;

/// <summary>Falcon and BLOOM config.json reading: transformers 4.45 defaults, HF aliases, legacy names, refusals.</summary>
public sealed class FalconConfigTests
{
    [Fact]
    public void Absent_keys_take_transformers_defaults_a_7B_style_Falcon()
    {
        var c = (FalconConfig)ModelConfigLoader.Parse("""{"model_type":"falcon"}""");
        Assert.Equal((65024, 4544, 4 * 4544, 32, 71, 1, 64), (c.VocabSize, c.HiddenSize, c.FfnHiddenSize, c.NumLayers, c.NumHeads, c.NumKvHeads, c.HeadDim));
        Assert.True(c.MultiQuery && c.ParallelAttn && c.TieWordEmbeddings);
        Assert.False(c.NewDecoderArchitecture || c.Bias || c.Alibi || c.TwoInputNorms);
        Assert.Equal((11, 11), (c.BosTokenId, c.EosTokenIds[0]));
        Assert.Equal((1e-5, 10000.0, "gelu"), (c.LayerNormEpsilon, c.RopeTheta, c.Activation));
    }

    [Fact]
    public void Kv_heads_follow_the_layout()
    {
        FalconConfig Parse(string extra) => (FalconConfig)ModelConfigLoader.Parse($$"""{"model_type":"falcon","hidden_size":64,"num_attention_heads":8{{extra}}}""");
        Assert.Equal(1, Parse("""  ,"multi_query":true,"num_kv_heads":4""").NumKvHeads);      // 7B: multi_query wins
        Assert.Equal(8, Parse("""  ,"multi_query":false""").NumKvHeads);
        Assert.Equal(4, Parse("""  ,"new_decoder_architecture":true,"num_kv_heads":4""").NumKvHeads);
        Assert.Equal(8, Parse("""  ,"new_decoder_architecture":true""").NumKvHeads);           // num_kv_heads defaults to the heads
        var twoNorms = Parse("""  ,"new_decoder_architecture":true""");
        Assert.Equal(2, twoNorms.NumLnInParallelAttn);                                          // absent means 2 for the new layout
        Assert.Equal((8 + 2 * 8) * 8, twoNorms.FusedQkvSize);
    }

    [Fact]
    public void Legacy_RefinedWeb_names_and_aliases_read()
    {
        var big = (FalconConfig)ModelConfigLoader.Parse("""{"model_type":"RefinedWeb","n_embed":64,"n_head":8,"n_head_kv":2,"n_layer":3}""");
        Assert.True(big.NewDecoderArchitecture && big.TwoInputNorms);
        Assert.Equal(("falcon", 64, 8, 2, 3), (big.ModelType, big.HiddenSize, big.NumHeads, big.NumKvHeads, big.NumLayers));
        var small = (FalconConfig)ModelConfigLoader.Parse("""{"model_type":"RefinedWebModel","n_embed":64,"n_head":8,"n_layer":2,"alibi":true}""");
        Assert.False(small.NewDecoderArchitecture);
        Assert.True(small.Alibi && small.MultiQuery);
        Assert.Equal(1, small.NumKvHeads);
    }

    [Fact]
    public void Fixture_configs_round_trip_through_HF_json()
    {
        foreach (var name in new[] { "falcon-new", "bloom" })
        {
            var c = ModelConfigLoader.Load(TestData.Path(name));
            var again = ModelConfigLoader.Parse(c.ToHfJson().ToJsonString());
            Assert.Equal(c.EosTokenIds, again.EosTokenIds);
            Assert.Equal(c with { EosTokenIds = [] }, again with { EosTokenIds = [] });
        }
    }

    [Fact]
    public void Bloom_reads_short_and_long_names()
    {
        var c = (BloomConfig)ModelConfigLoader.Parse("""{"model_type":"bloom","hidden_size":48,"num_attention_heads":12,"num_hidden_layers":5}""");
        Assert.Equal((48, 12, 12, 4, 5), (c.HiddenSize, c.NumHeads, c.NumKvHeads, c.HeadDim, c.NumLayers));
        var d = (BloomConfig)ModelConfigLoader.Parse("""{"model_type":"bloom","n_embed":32,"n_head":4,"n_layer":2}""");
        Assert.Equal((32, 4, 2, 250880), (d.HiddenSize, d.NumHeads, d.NumLayers, d.VocabSize));
        Assert.True(d.TieWordEmbeddings);
        Assert.Equal((1, 2), (d.BosTokenId, d.EosTokenIds[0]));
    }

    [Theory]
    [InlineData("""{"model_type":"falcon","hidden_size":30,"num_attention_heads":4}""", "must be a multiple of num_attention_heads")]
    [InlineData("""{"model_type":"falcon","activation":"relu"}""", "activation 'relu' is not supported")]
    [InlineData("""{"model_type":"falcon","new_decoder_architecture":true,"parallel_attn":false}""", "new_decoder_architecture requires parallel_attn")]
    [InlineData("""{"model_type":"falcon","num_ln_in_parallel_attn":2}""", "needs new_decoder_architecture")]
    [InlineData("""{"model_type":"falcon","new_decoder_architecture":true,"num_attention_heads":71,"num_kv_heads":8}""", "must be a multiple of num_key_value_heads")]
    [InlineData("""{"model_type":"falcon","rope_scaling":{"rope_type":"llama3","factor":8.0}}""", "linear or dynamic")]
    [InlineData("""{"model_type":"bloom","hidden_size":50,"n_head":8}""", "must be a multiple of n_head")]
    [InlineData("""{"model_type":"bloom","n_head":"six"}""", "'n_head' must be an integer")]
    public void Bad_configs_get_errors_that_name_the_problem(string json, string expected)
    {
        var e = Assert.Throws<ConfigException>(() => ModelConfigLoader.Parse(json, "/models/x/config.json"));
        Assert.Contains(expected, e.Message);
        Assert.Contains("/models/x/config.json", e.Message);
    }
}
