using PetalsSharp.Models;
using PetalsSharp.Tests.Cli;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models;

/// <summary>Every family makes random checkpoints that load and run, and names a ~100M benchmark config.</summary>
[Trait("Category", "Processes")]
public sealed class FamilyCreateTests
{
    [Theory]
    [InlineData("falcon")]
    [InlineData("bloom")]
    [InlineData("mistral")]
    [InlineData("qwen2")]
    public async Task Create_model_writes_a_family_checkpoint_that_generates(string family)
    {
        var dir = Path.Combine(Directory.CreateTempSubdirectory("petals-create").FullName, family);
        var res = await CliRunner.RunAsync("create-model", "--family", family, "--hidden-size", "32", "--layers", "2",
            "--heads", "4", "--vocab-size", "300", "--seed", "3", "--out", dir);
        Assert.True(res.ExitCode == 0, res.Stderr);
        Assert.Equal(family, ModelConfigLoader.Load(dir).ModelType);
        var gen = await CliRunner.RunAsync("generate", "--model", dir, "--prompt", "Hello world", "-n", "4", "--seed", "1");
        Assert.True(gen.ExitCode == 0, gen.Stderr);
        Assert.StartsWith("Hello world", gen.Stdout);
    }

    [Fact]
    public void Bloom_refuses_shapes_it_cannot_have()
    {
        Assert.Throws<ConfigException>(() => BloomFamily.Instance.CreateConfig(new ModelShape(32, 1, 4, null, 100, 300, 64, false)));
        Assert.Throws<ConfigException>(() => BloomFamily.Instance.CreateConfig(new ModelShape(32, 1, 4, 2, null, 300, 64, false)).Validate("x"));
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("falcon")]
    [InlineData("bloom")]
    [InlineData("mistral")]
    [InlineData("qwen2")]
    public void Benchmark_configs_have_about_100M_parameters(string family)
    {
        var c = ModelFamilies.Find(family)!.BenchmarkConfig();
        c.Validate(family);
        long count = c.Family.EndTensors(c).Concat(Enumerable.Range(0, c.NumLayers).SelectMany(i => c.Family.BlockTensors(c, i)))
            .Sum(s => s.Shape.Aggregate(1L, (a, b) => a * b));
        Assert.InRange(count, 80_000_000, 130_000_000);
    }
}
