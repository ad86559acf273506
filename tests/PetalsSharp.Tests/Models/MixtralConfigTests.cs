using PetalsSharp.Models;
using PetalsSharp.Tests.Cli;
using Xunit;

namespace PetalsSharp.Tests.Models;

[Trait("Category", "Processes")]
public sealed class MixtralConfigTests
{
    [Fact]
    public void Absent_keys_take_transformers_4_45_defaults()
    {
        var c = (MixtralConfig)ModelConfigLoader.Parse("""{"model_type":"mixtral"}""");
        Assert.Equal((32000, 4096, 14336, 32, 32, 8, 128), (c.VocabSize, c.HiddenSize, c.IntermediateSize, c.NumLayers, c.NumHeads, c.NumKvHeads, c.HeadDim));
        Assert.Equal((8, 2), (c.NumLocalExperts, c.NumExpertsPerTok));
        Assert.Null(c.SlidingWindow);
        Assert.Equal(1e6, c.RopeTheta);
        Assert.Equal(1e-5, c.RmsNormEps);
        Assert.Equal(131072, c.MaxPositionEmbeddings);
        Assert.False(c.TieWordEmbeddings);
        Assert.Equal(1, c.BosTokenId);
        Assert.Equal([2], c.EosTokenIds);
    }

    [Fact]
    public void Fixture_config_reads_as_written_and_names_every_checkpoint_tensor()
    {
        var c = (MixtralConfig)ModelConfigLoader.Load(TestData.Path("mixtral"));
        Assert.Equal((288, 64, 96, 2, 4, 2, 16), (c.VocabSize, c.HiddenSize, c.IntermediateSize, c.NumLayers, c.NumHeads, c.NumKvHeads, c.HeadDim));
        Assert.Equal((4, 2, (int?)null, 1e6), (c.NumLocalExperts, c.NumExpertsPerTok, c.SlidingWindow, c.RopeTheta));
        using var reference = Reference.Load("mixtral");
        var expected = reference["safetensors_tensor_names"].EnumerateArray().Select(e => e.GetString()!).ToList();
        var ours = c.Family.EndTensors(c).Concat(Enumerable.Range(0, c.NumLayers).SelectMany(i => c.Family.BlockTensors(c, i)))
            .Select(s => s.Name).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(expected, ours);
    }

    [Fact]
    public void Hf_json_round_trips()
    {
        var c = (MixtralConfig)ModelConfigLoader.Parse("""{"model_type":"mixtral","hidden_size":64,"num_attention_heads":4,"num_key_value_heads":2,"intermediate_size":96,"num_local_experts":8,"num_experts_per_tok":3,"sliding_window":128,"eos_token_id":[5,6]}""");
        var again = (MixtralConfig)ModelConfigLoader.Parse(c.ToHfJson().ToJsonString());
        Assert.Equal(c with { TorchDtype = "float32" }, again with { EosTokenIds = c.EosTokenIds });
        Assert.Equal([5, 6], again.EosTokenIds);
        Assert.Equal((8, 3, (int?)128), (again.NumLocalExperts, again.NumExpertsPerTok, again.SlidingWindow));
    }

    [Theory]
    [InlineData("""{"model_type":"mixtral","num_local_experts":4,"num_experts_per_tok":5}""", "num_experts_per_tok must be in [1, num_local_experts = 4]")]
    [InlineData("""{"model_type":"mixtral","num_local_experts":0}""", "num_local_experts must be positive")]
    [InlineData("""{"model_type":"mixtral","sliding_window":0}""", "sliding_window must be positive or null")]
    [InlineData("""{"model_type":"mixtral","num_local_experts":"eight"}""", "'num_local_experts' must be an integer")]
    [InlineData("""{"model_type":"mixtral","hidden_act":"gelu"}""", "hidden_act 'gelu' is not supported")]
    public void Bad_configs_are_refused_with_the_key_named(string json, string message)
    {
        var e = Assert.Throws<ConfigException>(() => ModelConfigLoader.Parse(json));
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void Every_family_supplies_a_benchmark_config_of_about_100M_parameters()
    {
        foreach (var type in ModelFamilies.Names)
        {
            var family = ModelFamilies.Find(type)!;
            var c = family.BenchmarkConfig();
            c.Validate(type);
            long n = family.EndTensors(c).Concat(Enumerable.Range(0, c.NumLayers).SelectMany(i => family.BlockTensors(c, i)))
                .Sum(s => s.Shape.Aggregate(1L, (a, d) => a * d));
            Assert.InRange(n, 80_000_000L, 140_000_000L);
        }
    }

    [Fact]
    public async Task Create_model_writes_a_mixtral_checkpoint_that_generates()
    {
        var dir = Path.Combine(Directory.CreateTempSubdirectory("petals-mixtral").FullName, "m");
        var res = await CliRunner.RunAsync("create-model", "--family", "mixtral", "--hidden-size", "32", "--layers", "2",
            "--heads", "4", "--kv-heads", "2", "--vocab-size", "300", "--set", "num_local_experts=6",
            "--set", "sliding_window=4", "--seed", "3", "--out", dir);
        Assert.True(res.ExitCode == 0, res.Stderr);
        var c = (MixtralConfig)ModelConfigLoader.Load(dir);
        Assert.Equal((6, 2, (int?)4, 32), (c.NumLocalExperts, c.NumExpertsPerTok, c.SlidingWindow, c.HiddenSize));
        var gen = await CliRunner.RunAsync("generate", "--model", dir, "--prompt", "Hello world", "-n", "8", "--seed", "1");
        Assert.True(gen.ExitCode == 0, gen.Stderr);
        Assert.StartsWith("Hello world", gen.Stdout);
        var bad = await CliRunner.RunAsync("create-model", "--family", "mixtral", "--set", "num_experts_per_tok=9", "--out", dir + "-bad");
        Assert.NotEqual(0, bad.ExitCode);
        Assert.Contains("num_experts_per_tok", bad.Stderr);
    }
}
