using System.Text.Json;
using PetalsSharp.Tests.Cli;
using Xunit;

namespace PetalsSharp.Tests.Swarm;

/// <summary><c>--peers</c> makes generate and inspect print what local runs print.</summary>
[Trait("Category", "Processes")]
[Collection(LlamaSwarmCollection.Name)]
public sealed class DistributedCliTests(LlamaSwarm swarm)
{
    [Fact]
    public async Task Generate_json_through_three_servers_equals_the_fixture()
    {
        using var r = Reference.Load("llama-gqa");
        var res = await CliRunner.RunAsync("generate", "--model", LlamaSwarm.ModelDir, "--peers", string.Join(",", swarm.ThreePeers),
            "--input-ids", r.IdsArg("generation.prompt_ids"), "--max-new-tokens", "12", "--greedy", "--json");
        Assert.True(res.ExitCode == 0, res.Stderr);
        using var doc = JsonDocument.Parse(res.Stdout);
        Assert.Equal(r["generation.new_tokens"].GetRawText().Replace(" ", ""), doc.RootElement.GetProperty("new_tokens").GetRawText());
        Assert.Equal(r["generation.sequences"].GetRawText().Replace(" ", ""), doc.RootElement.GetProperty("sequences").GetRawText());
    }

    [Fact]
    public async Task Inspect_json_through_two_servers_matches_local()
    {
        using var r = Reference.Load("llama-gqa");
        var remote = await CliRunner.RunAsync("inspect", "--model", LlamaSwarm.ModelDir, "--peers", string.Join(",", swarm.TwoPeers),
            "--input-ids", r.IdsArg("input_ids"), "--json");
        Assert.True(remote.ExitCode == 0, remote.Stderr);
        using var doc = JsonDocument.Parse(remote.Stdout);
        var logits = Reference.ToTensor(doc.RootElement.GetProperty("logits"), TorchSharp.torch.ScalarType.Float32);
        TensorAssert.Close(r.Floats("logits"), logits, 1e-3, 1e-4, "logits");
        var hidden = doc.RootElement.GetProperty("hidden_states");
        Assert.Equal(JsonValueKind.Null, hidden[1].ValueKind);                 // inside the first server's span
        var expected = r.Floats("hidden_states");
        foreach (var i in new[] { 0, 2, 3 })
            TensorAssert.Close(expected[i], Reference.ToTensor(hidden[i], TorchSharp.torch.ScalarType.Float32), 1e-3, 1e-4, $"hidden_states[{i}]");
    }

    [Fact]
    public async Task Unreachable_peer_is_one_line_and_nonzero_exit()
    {
        var res = await CliRunner.RunAsync("generate", "--model", LlamaSwarm.ModelDir, "--peers", "127.0.0.1:1", "--input-ids", "1,2");
        Assert.NotEqual(0, res.ExitCode);
        Assert.Single(res.Stderr.Trim().Split('\n'));
        Assert.Contains("Unavailable", res.Stderr);
    }
}
