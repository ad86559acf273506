using PetalsSharp.Client;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Tests.Adapters;
using Xunit;

namespace PetalsSharp.Tests.Swarm;

/// <summary>
/// Falcon, BLOOM, Mistral and Qwen2 through two `petals server` processes, each holding half the blocks: the client keeps the
/// embeddings (and BLOOM's embedding norm), the servers run the blocks, and greedy decoding gives the fixture's tokens.
/// Both servers also hold a random LoRA adapter: plain requests ignore it, requests naming it equal merged weights.
/// </summary>
[Trait("Category", "Processes")]
public sealed class FamilySwarmTests
{
    [Theory]
    [InlineData("falcon-new")]
    [InlineData("bloom")]
    [InlineData("mistral")]
    [InlineData("qwen2")]
    public async Task Two_servers_give_the_fixture_greedy_tokens_and_logits(string fixture)
    {
        var dir = TestData.Path(fixture);
        using var reference = Reference.Load(fixture);
        int layers = ModelConfigLoader.Load(dir).NumLayers, half = (layers + 1) / 2;
        var adapter = TestAdapter.Write(TestAdapter.NewDir("fam"), seed: 13, fixture: fixture);
        var spec = $"fam={adapter}";
        var servers = await Task.WhenAll(ServerProcess.StartAsync(dir, 0, half, "--adapters", spec),
            ServerProcess.StartAsync(dir, half, layers, "--adapters", spec));
        try
        {
            var routes = new List<string>();
            using var lm = await DistributedModel.ConnectAsync(dir, servers.Select(s => s.Address), new RemoteOptions { OnRoute = routes.Add });
            TensorAssert.Close(reference.Floats("logits"), lm.Forward(reference.Longs("input_ids")), 1e-3, 1e-4, $"{fixture} logits");
            var result = await lm.GenerateAsync(reference.IdRows("generation.prompt_ids"), new GenerationOptions { MaxNewTokens = 12, IgnoreEos = true });
            Assert.Equal(reference.IdRows("generation.new_tokens"), result.NewTokens);
            Assert.Equal(2, routes[^1].Split(' ').Length - 1);

            using var adapted = await DistributedModel.ConnectAsync(dir, servers.Select(s => s.Address), new RemoteOptions { ActiveAdapter = "fam" });
            using var merged = CausalLM.Load(TestAdapter.WriteMerged(adapter));
            var ids = reference.Longs("input_ids");
            var logits = adapted.Forward(ids);
            TensorAssert.Close(merged.Forward(ids), logits, 1e-4, 1e-4, $"{fixture} adapted logits vs merged");
            Assert.True(TensorAssert.MaxAbsDiff(reference.Floats("logits"), logits) > 1e-2, "the adapter must change the logits");
        }
        finally
        {
            foreach (var s in servers) s.Dispose();
        }
    }
}
