using PetalsSharp.Client;
using PetalsSharp.Dht;
using PetalsSharp.Generation;
using PetalsSharp.Server;
using PetalsSharp.Swarm;
using PetalsSharp.Tests.Swarm;
using Xunit;
using Xunit.Abstractions;

namespace PetalsSharp.Tests.Client;

/// <summary>
/// Kill -9 a server on the route in the middle of a generation: the client bans it, replaces exactly its blocks
/// (with one or several servers), replays the history and the user sees the same greedy tokens. Twenty rounds
/// over different hops and moments; every killed server is replaced by a fresh process so that every span keeps
/// a second server.
/// </summary>
[Trait("Category", "Processes")]
[Collection(LlamaSwarmCollection.Name)]
public sealed class ChaosTests(ITestOutputHelper output)
{
    static readonly string Model = LlamaSwarm.ModelDir;

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Killing_a_server_mid_generation_changes_no_token_twenty_times(bool push)
    {
        using var r = Reference.Load("llama-gqa");
        var prompts = r.IdRows("generation.prompt_ids");
        var expected = r.IdRows("generation.new_tokens");
        await using var bootstrap = await DhtNode.StartAsync(new DhtNodeOptions { Host = "127.0.0.1", Port = 0 });
        var spans = new[] { (0, 2), (0, 2), (2, 3), (2, 3), (0, 1), (1, 3) };
        var servers = new Dictionary<string, (ServerProcess Process, (int, int) Span)>();
        async Task StartAsync((int Start, int End) span)
        {
            var p = await ServerProcess.StartAsync(Model, span.Start, span.End, "--initial-peers", bootstrap.PeerAddress, "--update-period", "1");
            lock (servers) servers[p.Address] = (p, span);
        }
        try
        {
            await Task.WhenAll(spans.Select(StartAsync));
            for (int round = 0; round < 20; round++)
            {
                var routes = new List<string>();
                using var lm = await DistributedModel.ConnectViaDhtAsync(Model, [bootstrap.PeerAddress],
                    new RemoteOptions { OnRoute = routes.Add, MinBackoff = TimeSpan.FromMilliseconds(50), UseServerToServer = push });
                int killAfter = 1 + round % 11;     // moments: after 1..11 generated tokens
                var tokens = new List<int>[] { [], [] };
                string? killed = null;
                await foreach (var step in lm.StreamAsync(prompts, new GenerationOptions { MaxNewTokens = 12, IgnoreEos = true }))
                {
                    for (int b = 0; b < 2; b++) tokens[b].Add(step.Tokens[b]!.Value);
                    if (step.Index + 1 != killAfter) continue;
                    var hops = routes[^1]["route: ".Length..].Split(' ');
                    var victim = hops[round % hops.Length];
                    killed = victim[..victim.IndexOf('[')];
                    servers[killed].Process.Kill();
                }
                output.WriteLine($"push {push}, round {round}: killed {killed} after {killAfter} tokens; routes: {string.Join(" | ", routes)}");
                Assert.Equal(expected[0], tokens[0]);
                Assert.Equal(expected[1], tokens[1]);
                Assert.True(routes.Count >= 2, "the route must change after the kill");
                var span = servers[killed!].Span;
                servers[killed!].Process.Dispose();
                servers.Remove(killed!);
                await StartAsync(span);
            }
        }
        finally
        {
            foreach (var s in servers.Values) s.Process.Dispose();
        }
    }

    [Fact]
    public async Task A_lost_span_is_replaced_by_several_servers_and_forward_backward_retry()
    {
        using var r = Reference.Load("llama-gqa");
        await using var bootstrap = await DhtNode.StartAsync(new DhtNodeOptions { Host = "127.0.0.1", Port = 0 });
        string[] join = ["--initial-peers", bootstrap.PeerAddress, "--update-period", "1"];
        using var a = await ServerProcess.StartAsync(Model, 0, 2, join);
        using var b = await ServerProcess.StartAsync(Model, 2, 3, join);
        using var c = await ServerProcess.StartAsync(Model, 0, 1, join);
        using var d = await ServerProcess.StartAsync(Model, 1, 2, join);   // a's blocks can only be replaced by c + d
        for (int i = 0; i < 100 && (await SwarmReader.ReadAsync(bootstrap, ModelNames.DhtPrefix(ModelNames.FromFolder(Model)), 3)).Online.Count < 4; i++)
            await Task.Delay(100);
        var routes = new List<string>();
        using var lm = await DistributedModel.ConnectViaDhtAsync(Model, [bootstrap.PeerAddress], new RemoteOptions { OnRoute = routes.Add });
        Assert.StartsWith($"route: {a.Address}[0:2]", routes[^1]);
        var tokens = new List<int>[] { [], [] };
        await foreach (var step in lm.StreamAsync(r.IdRows("generation.prompt_ids"), new GenerationOptions { MaxNewTokens = 12, IgnoreEos = true }))
        {
            for (int i = 0; i < 2; i++) tokens[i].Add(step.Tokens[i]!.Value);
            if (step.Index == 4) a.Kill();
        }
        Assert.Equal(r.IdRows("generation.new_tokens"), tokens.Select(t => (IReadOnlyList<int>)t).ToList());
        Assert.Contains(routes, x => x.StartsWith($"route: {c.Address}[0:1] {d.Address}[1:2]"));

        // Forward and backward retry the same way: b dies and a newcomer found through the DHT takes [2:3].
        using var b2 = await ServerProcess.StartAsync(Model, 2, 3, join);
        for (int i = 0; i < 100 && (await SwarmReader.ReadAsync(bootstrap, ModelNames.DhtPrefix(ModelNames.FromFolder(Model)), 3)).Online.Count < 4; i++)
            await Task.Delay(100);
        b.Kill();
        var x = TorchSharp.torch.randn(1, 4, 64);
        using var local = PetalsSharp.Models.CausalLM.Load(Model);
        Assert.True(TensorAssert.MaxAbsDiff(local.Blocks.Forward(x), lm.Blocks.Forward(x)) <= 1e-5);
        var input = x.clone().requires_grad_(true);
        ((RemoteSequential)lm.Blocks).Backward(lm.Blocks.Forward(input).sum());
        var reference = x.clone().requires_grad_(true);
        local.Blocks.Forward(reference).sum().backward();
        Assert.True(TensorAssert.MaxAbsDiff(reference.grad!, input.grad!) <= 1e-5);
    }

    [Fact]
    public async Task When_no_server_is_left_the_user_gets_a_clear_final_error()
    {
        using var a = await ServerProcess.StartAsync(Model, 0, 3);
        using var lm = await DistributedModel.ConnectAsync(Model, [a.Address], new RemoteOptions { MaxRetries = 2, MinBackoff = TimeSpan.FromMilliseconds(10) });
        a.Kill();
        var e = await Assert.ThrowsAsync<SwarmException>(() => lm.GenerateAsync([[1, 2, 3]], new GenerationOptions { MaxNewTokens = 3 }));
        Assert.Contains("blocks [0, 3)", e.Message);
        Assert.Contains("2 retries", e.Message);
    }
}
