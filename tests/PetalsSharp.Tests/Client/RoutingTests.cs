using PetalsSharp.Client;
using PetalsSharp.Generation;
using PetalsSharp.Server;
using PetalsSharp.Swarm;
using PetalsSharp.Testing;
using PetalsSharp.Tests.Swarm;
using Xunit;

namespace PetalsSharp.Tests.Client;

/// <summary>Routing through real servers behind a WAN shaper: the client takes the lower-latency chain.</summary>
[Trait("Category", "Processes")]
[Collection(LlamaSwarmCollection.Name)]
public sealed class RoutingTests
{
    static readonly string Model = LlamaSwarm.ModelDir;

    [Fact]
    public async Task The_client_takes_the_lower_latency_chain_and_honours_allow_and_block_lists()
    {
        using var far = await ServerProcess.StartAsync(Model, 0, 3);
        using var near = await ServerProcess.StartAsync(Model, 0, 3);
        await using var shaper = await LinkShaper.StartAsync(far.Address, TimeSpan.FromMilliseconds(60));
        var routes = new List<string>();
        using (var lm = await DistributedModel.ConnectAsync(Model, [shaper.Address, near.Address], new RemoteOptions { OnRoute = routes.Add }))
        {
            await ((RemoteSequential)lm.Blocks).PingAsync();
            await lm.GenerateAsync([[1, 2, 3]], new GenerationOptions { MaxNewTokens = 2 });
            Assert.Equal($"route: {near.Address}[0:3]", routes[^1]);
        }
        // The shaped server is the only allowed one: the client must take it, slow or not.
        using (var lm = await DistributedModel.ConnectAsync(Model, [shaper.Address, near.Address],
                   new RemoteOptions { OnRoute = routes.Add, BlockedServers = new HashSet<string> { near.Address } }))
        {
            await lm.GenerateAsync([[1, 2, 3]], new GenerationOptions { MaxNewTokens = 2 });
            Assert.Equal($"route: {shaper.Address}[0:3]", routes[^1]);
        }
        using (var lm = await DistributedModel.ConnectAsync(Model, [shaper.Address, near.Address],
                   new RemoteOptions { OnRoute = routes.Add, AllowedServers = new HashSet<string> { shaper.Address } }))
        {
            await lm.GenerateAsync([[1, 2, 3]], new GenerationOptions { MaxNewTokens = 2 });
            Assert.Equal($"route: {shaper.Address}[0:3]", routes[^1]);
        }
        // Delay moves to the other side: once the client re-measures, it switches.
        shaper.OneWayDelay = TimeSpan.Zero;
        await using var slowNear = await LinkShaper.StartAsync(near.Address, TimeSpan.FromMilliseconds(60));
        using (var lm = await DistributedModel.ConnectAsync(Model, [shaper.Address, slowNear.Address], new RemoteOptions { OnRoute = routes.Add }))
        {
            await ((RemoteSequential)lm.Blocks).PingAsync();
            await lm.GenerateAsync([[1, 2, 3]], new GenerationOptions { MaxNewTokens = 2 });
            Assert.Equal($"route: {shaper.Address}[0:3]", routes[^1]);
        }
    }

    [Fact]
    public async Task Background_refresh_moves_new_sessions_to_the_route_that_became_faster()
    {
        using var one = await ServerProcess.StartAsync(Model, 0, 3);
        using var two = await ServerProcess.StartAsync(Model, 0, 3);
        await using var a = await LinkShaper.StartAsync(one.Address, TimeSpan.FromMilliseconds(150));
        await using var b = await LinkShaper.StartAsync(two.Address, TimeSpan.Zero);
        var routes = new List<string>();
        // 150 ms one way: far above the scheduling noise of a loaded 2-core machine, which can reach tens of ms.
        using var lm = await DistributedModel.ConnectAsync(Model, [a.Address, b.Address],
            new RemoteOptions { OnRoute = routes.Add, RefreshPeriod = TimeSpan.FromMilliseconds(200) });
        await lm.GenerateAsync([[1, 2, 3]], new GenerationOptions { MaxNewTokens = 1 });
        Assert.Equal($"route: {b.Address}[0:3]", routes[^1]);
        a.OneWayDelay = TimeSpan.Zero;
        b.OneWayDelay = TimeSpan.FromMilliseconds(150);
        // Nobody calls PingAsync: the pool's own refresh re-measures, and the moving average crosses over.
        for (int i = 0; i < 100 && routes[^1] != $"route: {a.Address}[0:3]"; i++)
        {
            await Task.Delay(200);
            await lm.GenerateAsync([[1, 2, 3]], new GenerationOptions { MaxNewTokens = 1 });
        }
        Assert.Equal($"route: {a.Address}[0:3]", routes[^1]);
    }
}
