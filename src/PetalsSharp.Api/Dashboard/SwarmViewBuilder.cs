using PetalsSharp.Swarm;
using PetalsSharp.Wire.V1;

namespace PetalsSharp.Api.Dashboard;

/// <summary>One model's records as read from the DHT: its model-index entry and its per-block server records.</summary>
public sealed record ModelRecords(string DhtPrefix, int NumBlocks, string Repository, string ModelType, SwarmSnapshot Snapshot);

/// <summary>How the dashboard judges a swarm.</summary>
public sealed record DashboardSettings
{
    /// <summary>Warn when a block has fewer ONLINE servers than this (an uncovered block is always an error).</summary>
    public int MinCoverage { get; init; } = 1;

    /// <summary>How long a server whose records expired stays listed as GONE.</summary>
    public TimeSpan GoneRetention { get; init; } = TimeSpan.FromMinutes(10);

    /// <summary>How often the DHT is read.</summary>
    public TimeSpan RefreshPeriod { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>Whether the swarm runs TLS (false for a swarm started with <c>--no-tls</c>).</summary>
    public bool Tls { get; init; } = true;
}

/// <summary>
/// Builds the dashboard's <see cref="SwarmView"/> from DHT records: a pure function of the records, the previous
/// view (which remembers servers that vanished) and the clock.
/// </summary>
public static class SwarmViewBuilder
{
    public const string Online = "ONLINE", Joining = "JOINING", Offline = "OFFLINE", Gone = "GONE";

    public static SwarmView Build(IReadOnlyList<ModelRecords> models, SwarmView? previous, DashboardSettings settings, DateTimeOffset now)
    {
        var previousModels = (previous?.Models ?? []).ToDictionary(m => m.DhtPrefix, StringComparer.Ordinal);
        var views = new List<ModelView>();
        foreach (var m in models.GroupBy(m => m.DhtPrefix, StringComparer.Ordinal).Select(g => g.First()))
            views.Add(BuildModel(m, previousModels.GetValueOrDefault(m.DhtPrefix), settings, now));
        // A model whose last server vanished also drops out of the model index: keep showing it while its servers are remembered.
        foreach (var old in previousModels.Values.Where(o => views.All(v => v.DhtPrefix != o.DhtPrefix)))
        {
            var empty = new ModelRecords(old.DhtPrefix, old.NumBlocks, old.Repository, old.ModelType, new SwarmSnapshot(old.DhtPrefix, old.NumBlocks, []));
            var view = BuildModel(empty, old, settings, now);
            if (view.Servers.Count > 0) views.Add(view);
        }
        views.Sort((a, b) => string.CompareOrdinal(a.DhtPrefix, b.DhtPrefix));
        var warnings = views.SelectMany(v => Warnings(v, settings)).ToList();
        if (views.Count == 0) warnings.Add(new SwarmWarning("no_models", "info", "", "no model is announced in this swarm yet", [], null));
        return new SwarmView(now, settings.MinCoverage, views, warnings);
    }

    static ModelView BuildModel(ModelRecords m, ModelView? previous, DashboardSettings settings, DateTimeOffset now)
    {
        var servers = new List<ServerView>();
        foreach (var s in m.Snapshot.Servers)
        {
            bool expired = s.Expiration <= now;
            var lastSeen = expired ? previous?.Servers.FirstOrDefault(p => p.PeerId == s.PeerId)?.LastSeen ?? s.Expiration : now;
            servers.Add(new ServerView(s.PeerId, s.PublicName, s.Address, s.Start, s.End, expired ? Gone : StateName(s.State),
                s.Throughput, s.InferenceRps, s.CacheTokensLeft, s.Version, s.WeightsDtype, s.Adapters, s.Expiration, lastSeen)
            { Quant = s.Quant, Reachability = s.Reachability, Relay = s.Relay });
        }
        foreach (var p in previous?.Servers ?? [])
            if (servers.All(s => s.PeerId != p.PeerId) && now - p.LastSeen < settings.GoneRetention)
                servers.Add(p with { State = Gone });
        servers.Sort((a, b) => a.Start != b.Start ? a.Start.CompareTo(b.Start) : string.CompareOrdinal(a.Address, b.Address));

        var blocks = new (int Servers, double Throughput)[m.NumBlocks];
        foreach (var s in servers.Where(s => s.State == Online))
            for (int i = Math.Max(0, s.Start); i < Math.Min(m.NumBlocks, s.End); i++)
                blocks[i] = (blocks[i].Servers + 1, blocks[i].Throughput + s.Throughput);
        var coverage = blocks.Select((c, i) => new BlockCoverage(i, c.Servers, c.Throughput,
            c.Servers == 0 ? "uncovered" : c.Servers < settings.MinCoverage ? "low" : "ok")).ToList();

        var pings = m.Snapshot.Servers
            .Where(s => s.Expiration > now && s.State != ServerState.Offline)
            .SelectMany(s => s.NextPings.Select(p => new PingView(s.PeerId, s.Address, p.Key, p.Value * 1000, p.Value >= RoutePlanner.MaxDelay)))
            .OrderBy(p => p.From, StringComparer.Ordinal).ThenBy(p => p.To, StringComparer.Ordinal)
            .ToList();
        return new ModelView(m.DhtPrefix, m.Repository, m.ModelType, m.NumBlocks, coverage, servers, pings);
    }

    static IEnumerable<SwarmWarning> Warnings(ModelView m, DashboardSettings settings)
    {
        foreach (var run in Runs(m.Blocks.Where(b => b.Status == "uncovered").Select(b => b.Block)))
            yield return new SwarmWarning("uncovered", "error", m.DhtPrefix,
                $"{m.DhtPrefix}: {Describe(run)} served by no online server", run, null);
        foreach (var run in Runs(m.Blocks.Where(b => b.Status == "low").Select(b => b.Block)))
            yield return new SwarmWarning("low_coverage", "warning", m.DhtPrefix,
                $"{m.DhtPrefix}: {Describe(run)} served by fewer than {settings.MinCoverage} online servers", run, null);
        foreach (var s in m.Servers.Where(s => s.State is Offline or Gone))
        {
            var who = s.PublicName.Length > 0 ? $"{s.PublicName} ({s.Address})" : s.Address;
            yield return s.State == Offline
                ? new SwarmWarning("server_offline", "warning", m.DhtPrefix, $"{m.DhtPrefix}: server {who} announced OFFLINE (blocks {s.Start}:{s.End})", [], s.PeerId)
                : new SwarmWarning("server_gone", "error", m.DhtPrefix, $"{m.DhtPrefix}: server {who} stopped announcing; its records expired (blocks {s.Start}:{s.End})", [], s.PeerId);
        }
    }

    /// <summary>Consecutive block indices grouped into runs, so a gap of ten blocks is one warning.</summary>
    static IEnumerable<IReadOnlyList<int>> Runs(IEnumerable<int> blocks)
    {
        var run = new List<int>();
        foreach (var b in blocks)
        {
            if (run.Count > 0 && b != run[^1] + 1)
            {
                yield return run;
                run = [];
            }
            run.Add(b);
        }
        if (run.Count > 0) yield return run;
    }

    static string Describe(IReadOnlyList<int> run) => run.Count == 1 ? $"block {run[0]} is" : $"blocks {run[0]}–{run[^1]} are";

    static string StateName(ServerState state) => state switch
    {
        ServerState.Online => Online,
        ServerState.Joining => Joining,
        _ => Offline,
    };
}
