using PetalsSharp.Cli.Commands;
using Xunit;

namespace PetalsSharp.Tests.Cli;

/// <summary><c>petals demo</c> with no arguments: the built-in stories260K model speaks English through three servers.</summary>
[Trait("Category", "Processes")]
public sealed class DemoTests
{
    [Fact]
    public async Task The_built_in_model_writes_the_stories260K_greedy_reference_through_three_servers()
    {
        using var r = Reference.Load("stories260K");
        var reference = r["continuations"].EnumerateArray().Single(c => c.GetProperty("prompt").GetString() == DemoModel.Prompt);
        Assert.Equal(DemoModel.MaxNewTokens, r["generation.max_new_tokens"].GetInt32());

        var res = await CliRunner.RunAsync("demo");

        Assert.True(res.ExitCode == 0, res.Stderr);
        Assert.Contains($"built-in model: {DemoModel.Name}", res.Stdout);
        Assert.Contains(reference.GetProperty("full_text").GetString()!, res.Stdout);
        Assert.Contains("greedy, through 3 servers", res.Stdout);
        Assert.Contains("servers stopped", res.Stdout);
    }
}
