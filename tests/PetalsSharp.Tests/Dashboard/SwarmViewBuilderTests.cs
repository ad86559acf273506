using System.Text.Json;
using PetalsSharp.Api.Dashboard;
using PetalsSharp.Swarm;
using PetalsSharp.Wire.V1;
using Xunit;

namespace PetalsSharp.Tests.Dashboard;

/// <summary>The dashboard's snapshot is a pure function of DHT records, the previous view and the clock.</summary>
public sealed class SwarmViewBuilderTests
{
    static readonly DateTimeOffset T0 = new(2025, 1, 1, 12, 0, 0, TimeSpan.Zero);

    static ServerInfo Server(string id, int start, int end, ServerState state = ServerState.Online, double throughput = 10,
        DateTimeOffset? expires = null, string name = "", Dictionary<string, double>? pings = null) =>
        new(id, $"10.0.0.{id.Length}:{start}{end}", start, end, state, throughput, throughput, 512, name, "float32", "1.0.0", "fp",
            ["lora-a"], expires ?? T0.AddSeconds(30))
        { NextPings = pings ?? [] };

    static ModelRecords Model(string prefix, int blocks, params ServerInfo[] servers) =>
        new(prefix, blocks, "org/" + prefix, "llama", SwarmSnapshot.FromRecords(prefix, blocks, servers));

    static SwarmView Build(SwarmView? previous, DateTimeOffset now, int minCoverage, params ModelRecords[] models) =>
        SwarmViewBuilder.Build(models, previous, new DashboardSettings { MinCoverage = minCoverage, GoneRetention = TimeSpan.FromMinutes(1) }, now);

    [Fact]
    public void Coverage_counts_online_servers_and_sums_their_throughput()
    {
        var view = Build(null, T0, 1, Model("m", 4,
            Server("a", 0, 2, throughput: 100), Server("bb", 1, 3, throughput: 50), Server("ccc", 2, 4, ServerState.Joining, 30)));
        var m = Assert.Single(view.Models);
        Assert.Equal([1, 2, 1, 0], m.Blocks.Select(b => b.Servers));
        Assert.Equal([100.0, 150, 50, 0], m.Blocks.Select(b => b.Throughput));
        Assert.Equal(["ok", "ok", "ok", "uncovered"], m.Blocks.Select(b => b.Status));
        Assert.Equal(["ONLINE", "ONLINE", "JOINING"], m.Servers.Select(s => s.State));
        var w = Assert.Single(view.Warnings);
        Assert.Equal(("uncovered", "error", "m"), (w.Kind, w.Severity, w.Model));
        Assert.Equal([3], w.Blocks);
        Assert.Equal(["lora-a"], m.Servers[0].Adapters);
        Assert.Equal(512, m.Servers[0].CacheTokensLeft);
    }

    [Fact]
    public void Blocks_below_the_minimum_coverage_are_warned_about_as_runs()
    {
        var view = Build(null, T0, 2, Model("m", 6, Server("a", 0, 6), Server("bb", 2, 4)));
        Assert.Equal(["low", "low", "ok", "ok", "low", "low"], view.Models[0].Blocks.Select(b => b.Status));
        var low = view.Warnings.Where(w => w.Kind == "low_coverage").ToList();
        Assert.Equal(2, low.Count);
        Assert.Equal([0, 1], low[0].Blocks);
        Assert.Equal([4, 5], low[1].Blocks);
        Assert.All(low, w => Assert.Equal("warning", w.Severity));
        Assert.Equal(2, view.MinCoverage);
    }

    [Fact]
    public void An_offline_server_is_listed_and_warned_about_but_covers_nothing()
    {
        var view = Build(null, T0, 1, Model("m", 2, Server("a", 0, 2), Server("bb", 0, 2, ServerState.Offline, name: "bob")));
        Assert.Equal([1, 1], view.Models[0].Blocks.Select(b => b.Servers));
        var w = Assert.Single(view.Warnings);
        Assert.Equal(("server_offline", "bb"), (w.Kind, w.PeerId));
        Assert.Contains("bob", w.Message);
    }

    [Fact]
    public void A_vanished_server_stays_listed_as_GONE_until_the_retention_ends()
    {
        var first = Build(null, T0, 1, Model("m", 2, Server("a", 0, 2), Server("bb", 0, 2)));
        var second = Build(first, T0.AddSeconds(5), 1, Model("m", 2, Server("a", 0, 2)));
        var gone = second.Models[0].Servers.Single(s => s.PeerId == "bb");
        Assert.Equal("GONE", gone.State);
        Assert.Equal(T0, gone.LastSeen);
        Assert.Equal([1, 1], second.Models[0].Blocks.Select(b => b.Servers));
        Assert.Contains(second.Warnings, w => w.Kind == "server_gone" && w.PeerId == "bb" && w.Severity == "error");

        var third = Build(second, T0.AddSeconds(30), 1, Model("m", 2, Server("a", 0, 2)));
        Assert.Equal("GONE", third.Models[0].Servers.Single(s => s.PeerId == "bb").State);
        var later = Build(third, T0.AddMinutes(2), 1, Model("m", 2, Server("a", 0, 2, expires: T0.AddMinutes(3))));
        Assert.DoesNotContain(later.Models[0].Servers, s => s.PeerId == "bb");
    }

    [Fact]
    public void An_expired_record_is_GONE_and_a_model_that_left_the_index_is_kept_while_remembered()
    {
        var view = Build(null, T0, 1, Model("m", 2, Server("a", 0, 2, expires: T0.AddSeconds(-1))));
        Assert.Equal("GONE", view.Models[0].Servers[0].State);
        Assert.Equal([0, 0], view.Models[0].Blocks.Select(b => b.Servers));

        var seen = Build(null, T0, 1, Model("m", 2, Server("a", 0, 2)));
        var empty = Build(seen, T0.AddSeconds(3));
        var m = Assert.Single(empty.Models);
        Assert.Equal(("m", "org/m", 2), (m.DhtPrefix, m.Repository, m.NumBlocks));
        Assert.Equal("GONE", Assert.Single(m.Servers).State);
        Assert.Contains(empty.Warnings, w => w.Kind == "uncovered" && w.Blocks.SequenceEqual([0, 1]));
        Assert.Empty(Build(empty, T0.AddMinutes(5)).Models);
    }

    static SwarmView Build(SwarmView? previous, DateTimeOffset now) => Build(previous, now, 1);

    [Fact]
    public void Pings_come_from_live_servers_in_milliseconds()
    {
        var view = Build(null, T0, 1, Model("m", 3,
            Server("a", 0, 2, pings: new() { ["10.0.0.2:23"] = 0.012, ["10.0.0.9:99"] = RoutePlanner.MaxDelay }),
            Server("bb", 2, 3),
            Server("ccc", 0, 2, ServerState.Offline, pings: new() { ["10.0.0.2:23"] = 0.5 })));
        Assert.Equal(2, view.Models[0].Pings.Count);
        var p = view.Models[0].Pings[0];
        Assert.Equal(("a", "10.0.0.1:02", "10.0.0.2:23", false), (p.FromPeerId, p.From, p.To, p.Unreachable));
        Assert.Equal(12, p.Ms, 6);
        Assert.True(view.Models[0].Pings[1].Unreachable);   // a server that did not answer is announced at the cap
    }

    [Fact]
    public void No_models_is_an_info_warning_and_the_JSON_uses_snake_case()
    {
        var empty = Build(null, T0, 1);
        Assert.Equal("no_models", Assert.Single(empty.Warnings).Kind);

        var view = Build(null, T0, 1, Model("m", 1, Server("a", 0, 1, name: "<script>x</script>")));
        using var doc = JsonDocument.Parse(JsonSerializer.Serialize(view, DashboardEndpoints.Json));
        var root = doc.RootElement;
        Assert.Equal(1, root.GetProperty("min_coverage").GetInt32());
        var m = root.GetProperty("models")[0];
        Assert.Equal("m", m.GetProperty("dht_prefix").GetString());
        Assert.Equal(1, m.GetProperty("blocks")[0].GetProperty("servers").GetInt32());
        var s = m.GetProperty("servers")[0];
        Assert.Equal("<script>x</script>", s.GetProperty("public_name").GetString());
        Assert.Equal(512, s.GetProperty("cache_tokens_left").GetInt64());
        Assert.Equal("ONLINE", s.GetProperty("state").GetString());
        foreach (var name in new[] { "peer_id", "address", "start", "end", "throughput", "inference_rps", "version", "dtype", "adapters", "expires", "last_seen" })
            Assert.True(s.TryGetProperty(name, out _), name);
        Assert.Equal("direct", s.GetProperty("reachability").GetString());
        Assert.Equal("", s.GetProperty("relay").GetString());
    }

    [Fact]
    public void A_relayed_server_shows_its_relay()
    {
        var relay = "10.0.0.5:31338/" + new string('c', 40);
        var view = Build(null, T0, 1, Model("m", 1, Server("a", 0, 1) with { Relay = relay }));
        var s = Assert.Single(view.Models[0].Servers);
        Assert.Equal(("relayed", relay), (s.Reachability, s.Relay));
    }
}
