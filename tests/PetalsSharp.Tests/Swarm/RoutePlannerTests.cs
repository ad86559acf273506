using PetalsSharp.Swarm;
using PetalsSharp.Wire.V1;
using Xunit;

namespace PetalsSharp.Tests.Swarm;

/// <summary>Routing decisions over hand-made swarms: no servers, no network.</summary>
public sealed class RoutePlannerTests
{
    static ServerInfo Srv(string id, int start, int end, double rps = 0, long cache = 1 << 20, ServerState state = ServerState.Online) =>
        new(id, $"{id}:1", start, end, state, 1, rps, cache, id, "float32", "t", "", [], DateTimeOffset.MaxValue);

    static RoutingInputs Inputs(int start, int end, params ServerInfo[] servers) => new(servers, start, end);

    static Dictionary<string, double> Rtts(params (string Peer, double Rtt)[] rtts) => rtts.ToDictionary(r => r.Peer, r => r.Rtt);

    static Dictionary<string, IReadOnlyDictionary<string, double>> Pings(params (string From, string To, double Rtt)[] pings) =>
        pings.GroupBy(p => p.From).ToDictionary(g => g.Key, g => (IReadOnlyDictionary<string, double>)g.ToDictionary(p => p.To, p => p.Rtt));

    static string Route(PlannedRoute r) => string.Join(" ", r.Hops.Select(h => $"{h.Server.PeerId}[{h.Start}:{h.End}]"));

    [Fact]
    public void PicksTheLowerLatencyOfTwoChains()
    {
        var servers = new[] { Srv("a", 0, 4), Srv("b", 0, 2), Srv("c", 2, 4) };
        var pings = Pings(("b", "c", 0.02));
        var farA = Inputs(0, 4, servers) with { ClientRtts = Rtts(("a", 0.5), ("b", 0.05), ("c", 0.05)), NextPings = pings };
        Assert.Equal("b[0:2] c[2:4]", Route(RoutePlanner.MinLatency(farA)));
        var nearA = farA with { ClientRtts = Rtts(("a", 0.05), ("b", 0.05), ("c", 0.05)) };
        Assert.Equal("a[0:4]", Route(RoutePlanner.MinLatency(nearA)));
    }

    [Fact]
    public void ARelayedServerCostsItsRelayDelayAndHalfItsWeight()
    {
        // Equal servers, equal measured RTTs: the direct one wins by the relay's splice; a relayed one still serves alone.
        var direct = Srv("d", 0, 4);
        var relayed = Srv("r", 0, 4) with { Relay = "relay:1/" + new string('a', 40) };
        var both = Inputs(0, 4, relayed, direct) with { ClientRtts = Rtts(("d", 0.01), ("r", 0.01)) };
        Assert.Equal("d[0:4]", Route(RoutePlanner.MinLatency(both)));
        var alone = RoutePlanner.MinLatency(Inputs(0, 4, relayed) with { ClientRtts = Rtts(("r", 0.01)) });
        Assert.Equal("r[0:4]", Route(alone));
        Assert.Equal(0.005 + RoutePlanner.OverheadDelay + RoutePlanner.RelayDelay + 4.0 / RoutePlanner.DefaultInferenceRps + 0.005, alone.Cost, 9);
        // Load-spreading routes pick it with Petals' relay penalty: weight 0.5 × 4 against 4, so a third of the time.
        var random = new Random(1);
        int picked = Enumerable.Range(0, 3000).Count(_ => RoutePlanner.MaxThroughput(both, random).Hops[0].Server.PeerId == "r");
        Assert.InRange(picked, 850, 1150);
    }

    [Fact]
    public void CostMatchesAHandComputedExample()
    {
        // a runs [0,3) at 100 steps/s, b [3,5) at 50: client→a 0.2/2 + 0.018, 3/100, a→b 0.04/2 + 0.018, 2/50, b→client 0.1/2.
        var inputs = Inputs(0, 5, Srv("a", 0, 3, rps: 100), Srv("b", 2, 5, rps: 50)) with
        {
            ClientRtts = Rtts(("a", 0.2), ("b", 0.1)),
            NextPings = Pings(("a", "b", 0.04)),
        };
        var route = RoutePlanner.MinLatency(inputs);
        Assert.Equal("a[0:3] b[3:5]", Route(route));
        Assert.Equal(0.1 + 0.018 + 0.03 + 0.02 + 0.018 + 0.04 + 0.05, route.Cost, 12);
        Assert.Equal("route: a:1[0:3] b:1[3:5]", route.ToString());
        Assert.Equal(new ServerSpan("b:1", 2, 5), route.Chain[1].Server);

        // Unknown links cost Petals' default 0.15 s one way; unknown rps is 300 steps/s.
        var unknown = RoutePlanner.MinLatency(inputs with { NextPings = Pings() });
        Assert.Equal(0.1 + 0.018 + 0.03 + 0.15 + 0.018 + 0.04 + 0.05, unknown.Cost, 12);
        var defaults = RoutePlanner.MinLatency(Inputs(0, 2, Srv("a", 0, 2)));
        Assert.Equal(0.15 + 0.018 + 2.0 / 300 + 0.15, defaults.Cost, 12);
    }

    [Fact]
    public void PrefersServersWithCacheRoom()
    {
        var first = Inputs(0, 4, Srv("tight", 0, 4, cache: 50), Srv("roomy", 0, 4, cache: 5000)) with
        {
            ClientRtts = Rtts(("tight", 0.01), ("roomy", 0.3)),
        };
        Assert.Equal("tight[0:4]", Route(RoutePlanner.MinLatency(first)));              // forward: no cache needed
        Assert.Equal("roomy[0:4]", Route(RoutePlanner.MinLatency(first with { CacheTokensNeeded = 100 })));
        Assert.Equal("tight[0:4]", Route(RoutePlanner.MinLatency(first with { CacheTokensNeeded = 50 })));

        // The penalty applies to the next hop too, and a full server is still used when nothing else holds the blocks.
        var middle = Inputs(0, 4, Srv("x", 0, 2), Srv("y", 2, 4, cache: 10), Srv("z", 2, 4)) with
        {
            NextPings = Pings(("x", "y", 0.001), ("x", "z", 0.5)),
            CacheTokensNeeded = 100,
        };
        Assert.Equal("x[0:2] z[2:4]", Route(RoutePlanner.MinLatency(middle)));
        var only = RoutePlanner.MinLatency(Inputs(0, 2, Srv("full", 0, 2, cache: 0)) with { CacheTokensNeeded = 1 });
        Assert.Equal("full[0:2]", Route(only));
        Assert.True(only.Cost > RoutePlanner.CachePenalty);
    }

    [Fact]
    public void RespectsAllowAndBlockLists()
    {
        var inputs = Inputs(0, 4, Srv("a", 0, 4), Srv("b", 0, 4), Srv("c", 0, 2), Srv("d", 2, 4)) with
        {
            ClientRtts = Rtts(("a", 0.01), ("b", 0.1), ("c", 0.2), ("d", 0.2)),
        };
        Assert.Equal("a[0:4]", Route(RoutePlanner.MinLatency(inputs)));
        Assert.Equal("b[0:4]", Route(RoutePlanner.MinLatency(inputs with { BlockedPeers = new HashSet<string> { "a" } })));
        Assert.Equal("c[0:2] d[2:4]", Route(RoutePlanner.MinLatency(inputs with { AllowedPeers = new HashSet<string> { "c", "d" } })));

        var ex = Assert.Throws<SwarmException>(() => RoutePlanner.MinLatency(inputs with
        {
            AllowedPeers = new HashSet<string> { "a", "c", "d" },
            BlockedPeers = new HashSet<string> { "a", "d" },
        }));
        Assert.Contains("blocks 2, 3", ex.Message);
        Assert.Throws<SwarmException>(() => RoutePlanner.MaxThroughput(inputs with { AllowedPeers = new HashSet<string>() }, new Random(1)));
    }

    [Fact]
    public void AvoidsBannedPeersUnlessTheyAloneHoldABlock()
    {
        var inputs = Inputs(0, 4, Srv("a", 0, 4), Srv("b", 0, 4), Srv("c", 0, 2)) with { ClientRtts = Rtts(("a", 0.01)) };
        Assert.Equal("a[0:4]", Route(RoutePlanner.MinLatency(inputs)));
        Assert.Equal("b[0:4]", Route(RoutePlanner.MinLatency(inputs with { BannedPeers = new HashSet<string> { "a" } })));

        // a and b are both banned: blocks 0-1 go to c, but blocks 2-3 would have no server, so the ban is ignored there.
        var route = RoutePlanner.MinLatency(inputs with { BannedPeers = new HashSet<string> { "a", "b" } });
        Assert.Equal("c[0:2] a[2:4]", Route(route));
        Assert.Equal(new ServerSpan("a:1", 0, 4), route.Chain[1].Server);

        // A ban never uncovers a block, even with a single server.
        Assert.Equal("a[0:2]", Route(RoutePlanner.MinLatency(Inputs(0, 2, Srv("a", 0, 4)) with { BannedPeers = new HashSet<string> { "a" } })));
    }

    [Fact]
    public void IgnoresServersThatAreNotOnline()
    {
        var inputs = Inputs(0, 2, Srv("joining", 0, 2, state: ServerState.Joining), Srv("off", 0, 2, state: ServerState.Offline), Srv("on", 0, 2))
            with
        { ClientRtts = Rtts(("joining", 0.001), ("off", 0.001), ("on", 1)) };
        Assert.Equal("on[0:2]", Route(RoutePlanner.MinLatency(inputs)));
        var ex = Assert.Throws<SwarmException>(() => RoutePlanner.MinLatency(inputs with { Servers = inputs.Servers.Take(2).ToList() }));
        Assert.Contains("blocks 0, 1", ex.Message);
    }

    [Fact]
    public void RoutesASubRange()
    {
        var inputs = Inputs(3, 6, Srv("a", 0, 8, rps: 100), Srv("b", 0, 4), Srv("c", 4, 8)) with
        {
            ClientRtts = Rtts(("a", 0.1), ("b", 1), ("c", 1)),
        };
        var route = RoutePlanner.MinLatency(inputs);
        Assert.Equal("a[3:6]", Route(route));
        Assert.Equal(0.05 + 0.018 + 3 / 100.0 + 0.05, route.Cost, 12);
        Assert.Equal("b[3:4] c[4:6]", Route(RoutePlanner.MinLatency(inputs with { BlockedPeers = new HashSet<string> { "a" } })));
    }

    [Fact]
    public void UnreachablePeersAreALastResort()
    {
        var inputs = Inputs(0, 2, Srv("dead", 0, 2), Srv("slow", 0, 2)) with
        {
            ClientRtts = Rtts(("dead", double.PositiveInfinity), ("slow", 2)),
        };
        Assert.Equal("slow[0:2]", Route(RoutePlanner.MinLatency(inputs)));
        var alone = RoutePlanner.MinLatency(inputs with { Servers = [inputs.Servers[0]] });
        Assert.Equal("dead[0:2]", Route(alone));
        Assert.Equal(2 * RoutePlanner.MaxDelay + 0.018 + 2.0 / 300, alone.Cost, 12);
    }

    [Fact]
    public void RoutesAreContiguousAndCoverExactlyTheRange()
    {
        var random = new Random(7);
        for (int trial = 0; trial < 300; trial++)
        {
            int blocks = random.Next(1, 12);
            var servers = new List<ServerInfo>();
            for (int i = 0; i < random.Next(1, 8); i++)
            {
                int a = random.Next(blocks), b = random.Next(a + 1, blocks + 1);
                servers.Add(Srv($"s{i}", a, b, rps: random.Next(0, 3) * 100, cache: random.Next(0, 200)));
            }
            for (int b = 0; b < blocks; b++) servers.Add(Srv($"one{b}", b, b + 1));   // every block covered
            int start = random.Next(blocks), end = random.Next(start + 1, blocks + 1);
            var inputs = new RoutingInputs(servers, start, end)
            {
                ClientRtts = servers.Where(_ => random.Next(3) > 0).ToDictionary(s => s.PeerId, _ => random.NextDouble()),
                NextPings = servers.ToDictionary(s => s.PeerId,
                    s => (IReadOnlyDictionary<string, double>)servers.Where(_ => random.Next(2) > 0).ToDictionary(t => t.PeerId, _ => random.NextDouble())),
                CacheTokensNeeded = random.Next(0, 2) == 0 ? null : 100,
                BannedPeers = servers.Where(_ => random.Next(4) == 0).Select(s => s.PeerId).ToHashSet(),
            };
            foreach (var route in new[] { RoutePlanner.MinLatency(inputs), RoutePlanner.MaxThroughput(inputs, random) })
            {
                Assert.Equal(start, route.Hops[0].Start);
                Assert.Equal(end, route.Hops[^1].End);
                for (int i = 0; i < route.Hops.Count; i++)
                {
                    var h = route.Hops[i];
                    Assert.True(h.Start < h.End && h.Server.Start <= h.Start && h.End <= h.Server.End, $"{h} in {route}");
                    if (i > 0) Assert.Equal(route.Hops[i - 1].End, h.Start);
                }
            }
        }
    }

    [Fact]
    public void MaxThroughputPicksSpansInProportionToTheirLength()
    {
        var inputs = Inputs(0, 6, Srv("long", 0, 6), Srv("short", 0, 2), Srv("tail", 2, 6));
        var random = new Random(42);
        int trials = 4000, longFirst = 0;
        for (int i = 0; i < trials; i++)
        {
            var route = RoutePlanner.MaxThroughput(inputs, random);
            if (route.Hops[0].Server.PeerId == "long") { longFirst++; Assert.Single(route.Hops); }
            else Assert.Equal(("short", 0, 2), (route.Hops[0].Server.PeerId, route.Hops[0].Start, route.Hops[0].End));
        }
        Assert.InRange(longFirst / (double)trials, 0.72, 0.78);      // 6 / (6 + 2)

        // Length counts the whole span even for a sub-range; an unreachable peer is all but never chosen.
        var sub = inputs with { Start = 1, End = 2 };
        Assert.InRange(Enumerable.Range(0, trials).Count(_ => RoutePlanner.MaxThroughput(sub, random).Hops[0].Server.PeerId == "long") / (double)trials, 0.72, 0.78);
        var dead = inputs with { ClientRtts = Rtts(("long", double.PositiveInfinity)), Start = 0, End = 6 };
        Assert.All(Enumerable.Range(0, 200), _ => Assert.Equal("short[0:2] tail[2:6]", Route(RoutePlanner.MaxThroughput(dead, random))));
    }

    [Fact]
    public void BansDoubleUpToACapAndSuccessClearsThem()
    {
        var t0 = DateTimeOffset.UnixEpoch;
        var bans = BanList.Empty.Ban("p", t0);
        Assert.True(bans.IsBanned("p", t0.AddSeconds(14.9)));
        Assert.False(bans.IsBanned("p", t0.AddSeconds(15)));
        Assert.False(bans.IsBanned("q", t0));
        Assert.Same(bans, bans.Ban("p", t0.AddSeconds(5)));            // still banned: the same incident

        var now = t0.AddSeconds(15);
        var seen = new List<double>();
        for (int i = 0; i < 7; i++)
        {
            bans = bans.Ban("p", now);
            seen.Add((bans.BannedUntil("p", now)!.Value - now).TotalSeconds);
            now = bans.BannedUntil("p", now)!.Value;
        }
        Assert.Equal([30, 60, 120, 240, 300, 300, 300], seen);        // each right after the previous ban ran out

        bans = bans.Ban("p", now).Success("p");
        Assert.False(bans.IsBanned("p", now));
        Assert.Equal(15, (bans.Ban("p", now).BannedUntil("p", now)!.Value - now).TotalSeconds);
        Assert.Equal(new HashSet<string> { "p" }, bans.Ban("p", now).Ban("q", now.AddSeconds(-20)).BannedPeers(now));
    }

    [Fact]
    public void RttEstimatesSmoothExpireAndRecoverFromFailures()
    {
        var t0 = DateTimeOffset.UnixEpoch;
        var rtt = RttEstimator.Empty.Observe("p", 0.1, t0).Observe("p", 0.2, t0.AddSeconds(1));
        Assert.Equal(0.2 * 0.2 + 0.8 * 0.1, rtt.Get("p", t0.AddSeconds(1))!.Value, 12);
        Assert.Null(rtt.Get("q", t0));
        Assert.Null(rtt.Get("p", t0.AddSeconds(301)));                        // 300 s after the last sample
        Assert.Equal(0.5, rtt.Observe("p", 0.5, t0.AddSeconds(400)).Get("p", t0.AddSeconds(400)));   // expired: starts over

        var failed = rtt.ObserveFailure("p", t0.AddSeconds(2));
        Assert.Equal(double.PositiveInfinity, failed.Snapshot(t0.AddSeconds(2))["p"]);
        Assert.Equal(0.3, failed.Observe("p", 0.3, t0.AddSeconds(3)).Get("p", t0.AddSeconds(3)));   // replaces ∞
        Assert.Empty(rtt.Prune(t0.AddSeconds(500)).Entries);
    }
}
