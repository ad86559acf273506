using PetalsSharp.Tests.Cli;
using Xunit;

namespace PetalsSharp.Tests.Balance;

/// <summary>The placement options of <c>petals server</c> that must fail before anything is loaded.</summary>
[Trait("Category", "Processes")]
public sealed class PlacementCliTests
{
    [Theory]
    [InlineData("give --blocks", "--blocks", "0:1", "--num-blocks", "1")]
    [InlineData("needs a swarm", "--num-blocks", "1")]
    [InlineData("needs a swarm", "--memory-budget", "1000000")]
    [InlineData("more than the model's 3 blocks", "--num-blocks", "4", "--new-swarm")]
    [InlineData("--num-blocks must be at least 1", "--num-blocks", "0")]
    [InlineData("--throughput must be", "--blocks", "0:1", "--throughput", "fast")]
    [InlineData("--balance-threshold must be", "--num-blocks", "1", "--balance-threshold", "-1")]
    public async Task Bad_placement_options_are_one_line_on_stderr(string message, params string[] args)
    {
        var r = await CliRunner.RunAsync(["server", "--model", TestData.Path("llama-gqa"), "--port", "0", .. args]);
        Assert.NotEqual(0, r.ExitCode);
        var line = Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("error:", line);
        Assert.Contains(message, line);
    }
}
