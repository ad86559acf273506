using PetalsSharp.Swarm;
using PetalsSharp.Wire.V1;
using Xunit;

namespace PetalsSharp.Tests.Adapters;

/// <summary>Routing with an adapter uses only servers that announce it; both planners, no sockets.</summary>
public sealed class AdapterRoutingTests
{
    static ServerInfo Srv(string id, int start, int end, params string[] adapters) =>
        new(id, $"{id}:1", start, end, ServerState.Online, 1, 0, 1 << 20, id, "float32", "t", "", adapters, DateTimeOffset.MaxValue);

    static readonly ServerInfo[] Servers = [Srv("plain", 0, 4), Srv("a", 0, 2, "tiny"), Srv("b", 2, 4, "tiny"), Srv("c", 0, 3, "other")];

    static string Route(PlannedRoute r) => string.Join(" ", r.Hops.Select(h => $"{h.Server.PeerId}[{h.Start}:{h.End}]"));

    [Fact]
    public void Only_holders_of_the_adapter_are_routed_through()
    {
        var inputs = new RoutingInputs(Servers, 0, 4) { Adapter = "tiny" };
        Assert.Equal("a[0:2] b[2:4]", Route(RoutePlanner.MinLatency(inputs)));
        for (int seed = 0; seed < 20; seed++)
            Assert.Equal("a[0:2] b[2:4]", Route(RoutePlanner.MaxThroughput(inputs, new Random(seed))));
        // Without an adapter every server is eligible; the one-hop server wins on latency.
        Assert.Equal("plain[0:4]", Route(RoutePlanner.MinLatency(inputs with { Adapter = null })));
    }

    [Fact]
    public void Blocks_without_a_holder_are_named_with_the_adapter()
    {
        var e = Assert.Throws<SwarmException>(() => RoutePlanner.MinLatency(new RoutingInputs(Servers, 0, 4) { Adapter = "other" }));
        Assert.Contains("no usable server holds block 3 with adapter 'other'", e.Message);
        Assert.Contains("servers with it: c:1[0:3]:Online", e.Message);
        var none = Assert.Throws<SwarmException>(() => RoutePlanner.MaxThroughput(new RoutingInputs(Servers, 1, 3) { Adapter = "nope" }, new Random(1)));
        Assert.Contains("blocks 1, 2 with adapter 'nope'", none.Message);
    }

    [Fact]
    public void Announced_adapter_lists_are_bounded()
    {
        var names = Enumerable.Range(0, 100).Select(i => $"a{i}").Append(new string('x', 65)).Append("").Append("a1");
        var read = ServerInfo.ReadAdapters(names);
        Assert.Equal(64, read.Count);
        Assert.DoesNotContain("", read);
        Assert.All(read, n => Assert.True(n.Length <= 64));
    }
}
