using PetalsSharp.Wire.V1;

namespace PetalsSharp.Swarm;

/// <summary>
/// Everything a routing decision depends on, captured at one instant so the planner stays a pure function.
/// Peers are named by <see cref="ServerInfo.PeerId"/> throughout (the DHT node id hex that servers also use as
/// keys of their announced <c>next_pings</c>).
/// </summary>
/// <param name="Servers">Every known server; only ONLINE ones are routed through.</param>
/// <param name="Start">First block of the requested range.</param>
/// <param name="End">One past the last block of the requested range.</param>
public sealed record RoutingInputs(IReadOnlyList<ServerInfo> Servers, int Start, int End)
{
    /// <summary>The client's smoothed round-trip times by peer id, in seconds (<see cref="RttEstimator.Snapshot"/>);
    /// missing peers cost the default, +∞ marks an unreachable peer.</summary>
    public IReadOnlyDictionary<string, double> ClientRtts { get; init; } = new Dictionary<string, double>();

    /// <summary>Per server (by peer id), the RTTs it announced to servers that could follow it (its <c>next_pings</c>).</summary>
    public IReadOnlyDictionary<string, IReadOnlyDictionary<string, double>> NextPings { get; init; } =
        new Dictionary<string, IReadOnlyDictionary<string, double>>();

    /// <summary>batch × max_length of the session to open; null (forward/backward) disables the cache penalty.</summary>
    public long? CacheTokensNeeded { get; init; }

    /// <summary>When set, only these peers are used.</summary>
    public IReadOnlySet<string>? AllowedPeers { get; init; }

    /// <summary>Peers never used.</summary>
    public IReadOnlySet<string>? BlockedPeers { get; init; }

    /// <summary>Only servers that announce this LoRA adapter are used; null = any (base weights).</summary>
    public string? Adapter { get; init; }

    /// <summary>Only servers of the exact weights (no quantized spans) are used.</summary>
    public bool RequireExact { get; init; }

    /// <summary>Peers banned right now (<see cref="BanList.BannedPeers"/>); ignored for a block they would leave bare.</summary>
    public IReadOnlySet<string>? BannedPeers { get; init; }
}

/// <summary>One hop of a planned route: the server (with everything it announced) and the blocks it runs.</summary>
public sealed record RouteHop(ServerInfo Server, int Start, int End)
{
    public ChainHop ToChainHop() => new(Server.Span, Start, End);
    public override string ToString() => ToChainHop().ToString();
}

/// <summary>A route and its estimated cost (seconds per inference step for min-latency routes, 0 otherwise).</summary>
public sealed record PlannedRoute(IReadOnlyList<RouteHop> Hops, double Cost)
{
    /// <summary>The hops in the form the client's chain code takes.</summary>
    public IReadOnlyList<ChainHop> Chain => Hops.Select(h => h.ToChainHop()).ToList();

    /// <summary>Peer id of each hop, in order (what to ban when a hop fails).</summary>
    public IReadOnlyList<string> PeerIds => Hops.Select(h => h.Server.PeerId).ToList();

    public override string ToString() => ChainPlanner.Describe(Chain);
}

/// <summary>
/// Petals' two routing modes (design notes §2) as pure functions: a minimum-latency chain for inference sessions
/// (Dijkstra over (server, block) nodes) and a load-spreading random chain for forward/backward passes.
/// </summary>
public static class RoutePlanner
{
    /// <summary>Fixed per-hop cost of (de)serializing activations, from Petals' measurements.</summary>
    public const double OverheadDelay = 0.018;
    /// <summary>One-way delay assumed for a link nobody has measured.</summary>
    public const double DefaultDelay = 0.15;
    /// <summary>Cap on one-way delay: an unreachable peer stays in the graph (as a last resort) instead of vanishing.</summary>
    public const double MaxDelay = 5;
    /// <summary>Added when a server lacks cache room: it would refuse the session, so only use it if nothing else works.</summary>
    public const double CachePenalty = 10;
    /// <summary>
    /// Added to every hop into a relayed server: the relay's splice (a measured RTT through the relay already holds
    /// its network delay, an unmeasured one does not), and a preference for direct servers where they are as fast.
    /// </summary>
    public const double RelayDelay = 0.01;
    /// <summary>Petals' relay penalty for load-spreading routes: a relayed server's weight is scaled by it.</summary>
    public const double RelayPenalty = 0.5;
    /// <summary>Steps per second through one block assumed for a server that did not announce it.</summary>
    public const double DefaultInferenceRps = 300;

    /// <summary>
    /// The chain with the least estimated time per inference step: client→first server rtt/2 + overhead (+ cache
    /// penalty), 1/inference_rps per block, server→server next_ping/2 + overhead (+ cache penalty) only where a
    /// server's span ends, last server→client rtt/2. Throws <see cref="SwarmException"/> naming the blocks that no
    /// usable server holds.
    /// </summary>
    public static PlannedRoute MinLatency(RoutingInputs inputs)
    {
        var segments = UsableSegments(inputs);
        int start = inputs.Start, end = inputs.End;

        // Node (segment s, block b) means "the activation sits at s's server before block b"; b runs from the
        // segment's first block to its end inclusive, so the end node is where the activation leaves the server.
        var firstNode = new int[segments.Count];
        int nodes = 0;
        for (int s = 0; s < segments.Count; s++)
        {
            firstNode[s] = nodes;
            nodes += segments[s].End - segments[s].Start + 1;
        }
        int source = nodes, sink = nodes + 1;
        var edges = new List<(int To, double Cost)>[nodes + 2];
        for (int i = 0; i < edges.Length; i++) edges[i] = [];
        int Node(int s, int block) => firstNode[s] + block - segments[s].Start;

        for (int s = 0; s < segments.Count; s++)
        {
            var seg = segments[s];
            double rps = seg.Server.InferenceRps > 0 && double.IsFinite(seg.Server.InferenceRps) ? seg.Server.InferenceRps : DefaultInferenceRps;
            for (int b = seg.Start; b < seg.End; b++) edges[Node(s, b)].Add((Node(s, b + 1), 1.0 / rps));

            if (seg.Start == start)
                edges[source].Add((Node(s, start), ToDelay(inputs.ClientRtts, seg.Server.PeerId) + OverheadDelay + Penalty(seg.Server, inputs)));
            if (seg.End == end)
                edges[Node(s, end)].Add((sink, ToDelay(inputs.ClientRtts, seg.Server.PeerId)));
            else
            {
                // Leaving only at the end of a span keeps the graph O(servers × blocks) instead of quadratic,
                // at the price of never using a server for less than the rest of its span.
                var pings = inputs.NextPings.GetValueOrDefault(seg.Server.PeerId);
                for (int t = 0; t < segments.Count; t++)
                {
                    var next = segments[t];
                    if (t == s || next.Start > seg.End || next.End <= seg.End) continue;
                    double cost = ToDelay(pings, next.Server.PeerId) + OverheadDelay + Penalty(next.Server, inputs);
                    edges[Node(s, seg.End)].Add((Node(t, seg.End), cost));
                }
            }
        }

        var (dist, prev) = Dijkstra(edges, source);
        if (double.IsPositiveInfinity(dist[sink]))
            throw new SwarmException($"no route through blocks [{start}, {end})");

        var path = new List<int>();
        for (int v = prev[sink]; v != source; v = prev[v]) path.Add(v);
        path.Reverse();
        int SegmentOf(int node) => Array.FindLastIndex(firstNode, f => f <= node);

        var hops = new List<RouteHop>();
        int? current = null;
        foreach (var node in path)
        {
            int s = SegmentOf(node), block = segments[s].Start + node - firstNode[s];
            if (current != s)
            {
                hops.Add(new RouteHop(segments[s].Server, block, block));
                current = s;
            }
            else hops[^1] = hops[^1] with { End = block };
        }
        // Measured RTTs need not obey the triangle inequality, so a path may pass through a server without
        // running anything on it.
        return new PlannedRoute(hops.Where(h => h.End > h.Start).ToList(), dist[sink]);
    }

    /// <summary>
    /// Petals' forward/backward routing: from the current block, pick one of the servers holding it at random with
    /// probability ∝ its span length (× <see cref="RelayPenalty"/> when relayed, 1e-6 for peers the client cannot
    /// reach), run to the end of its span, repeat.
    /// Long spans mean few hops; the randomness spreads training load over replicas.
    /// </summary>
    public static PlannedRoute MaxThroughput(RoutingInputs inputs, Random random)
    {
        var segments = UsableSegments(inputs);
        var hops = new List<RouteHop>();
        int block = inputs.Start;
        while (block < inputs.End)
        {
            var candidates = segments.Where(s => s.Start <= block && block < s.End).ToList();
            var weights = candidates.Select(c =>
                double.IsPositiveInfinity(inputs.ClientRtts.GetValueOrDefault(c.Server.PeerId)) ? 1e-6
                : c.Server.IsRelayed ? c.Length * RelayPenalty : c.Length).ToArray();
            double pick = random.NextDouble() * weights.Sum();
            int chosen = candidates.Count - 1;
            for (int i = 0; i < candidates.Count; i++)
            {
                pick -= weights[i];
                if (pick < 0) { chosen = i; break; }
            }
            int hopEnd = Math.Min(candidates[chosen].End, inputs.End);
            hops.Add(new RouteHop(candidates[chosen].Server, block, hopEnd));
            block = hopEnd;
        }
        return new PlannedRoute(hops, 0);
    }

    /// <summary>
    /// A server's usable blocks <c>[Start, End)</c> within the request, as one contiguous run (bans can cut a span
    /// into several). <c>Length</c> is the whole run's length, even where it reaches beyond the requested range.
    /// </summary>
    sealed record Segment(ServerInfo Server, int Start, int End, int Length);

    /// <summary>
    /// Per block, the servers that may run it: ONLINE, allowed, not blocked, and not banned unless every server
    /// of that block is banned (then the failures were likely the client's own). Runs are clipped to the requested
    /// range. Throws when some block is left without servers.
    /// </summary>
    static List<Segment> UsableSegments(RoutingInputs inputs)
    {
        int start = inputs.Start, end = inputs.End;
        if (start < 0 || start >= end) throw new ArgumentOutOfRangeException(nameof(inputs), $"empty block range [{start}, {end})");

        var candidates = inputs.Servers
            .Where(s => s.State == ServerState.Online && s.Start < s.End)
            .Where(s => inputs.AllowedPeers is null || inputs.AllowedPeers.Contains(s.PeerId))
            .Where(s => inputs.BlockedPeers is null || !inputs.BlockedPeers.Contains(s.PeerId))
            .Where(s => inputs.Adapter is null || s.Adapters.Contains(inputs.Adapter, StringComparer.Ordinal))
            .Where(s => !inputs.RequireExact || s.IsExact)
            .ToList();

        // Eligibility is decided over the server's whole span (not just the request) so segment lengths match what
        // the server holds, as Petals' length weights and span-ends do.
        int lo = Math.Min(start, candidates.Count == 0 ? start : candidates.Min(s => s.Start));
        int hi = Math.Max(end, candidates.Count == 0 ? end : candidates.Max(s => s.End));
        var allBanned = new bool[hi - lo];
        for (int b = lo; b < hi; b++)
        {
            var holders = candidates.Where(s => s.Start <= b && b < s.End).ToList();
            allBanned[b - lo] = holders.Count > 0 && holders.All(s => IsBanned(inputs, s));
        }

        var segments = new List<Segment>();
        foreach (var s in candidates)
        {
            bool banned = IsBanned(inputs, s);
            int b = s.Start;
            while (b < s.End)
            {
                if (banned && !allBanned[b - lo]) { b++; continue; }
                int runStart = b;
                while (b < s.End && (!banned || allBanned[b - lo])) b++;
                int a = Math.Max(runStart, start), z = Math.Min(b, end);
                if (a < z) segments.Add(new Segment(s, a, z, b - runStart));
            }
        }

        var missing = Enumerable.Range(start, end - start).Where(b => !segments.Any(s => s.Start <= b && b < s.End)).ToList();
        if (missing.Count > 0 && inputs.Adapter is not null)
            throw new SwarmException($"no usable server holds block{(missing.Count > 1 ? "s" : "")} {string.Join(", ", missing)} with adapter '{inputs.Adapter}' " +
                $"(servers with it: {Describe(inputs.Servers.Where(s => s.Adapters.Contains(inputs.Adapter, StringComparer.Ordinal)))}; " +
                $"all known: {Describe(inputs.Servers)})");
        if (missing.Count > 0 && inputs.RequireExact)
            throw new SwarmException($"no server of the exact weights holds block{(missing.Count > 1 ? "s" : "")} {string.Join(", ", missing)}, " +
                $"and exact weights were required (quantized servers: {Describe(inputs.Servers.Where(s => !s.IsExact), withQuant: true)}; " +
                $"all known: {Describe(inputs.Servers, withQuant: true)})");
        if (missing.Count > 0)
            throw new SwarmException($"no usable server holds block{(missing.Count > 1 ? "s" : "")} {string.Join(", ", missing)} " +
                $"(known servers: {(inputs.Servers.Count == 0 ? "none" : string.Join(" ", inputs.Servers.Select(s => $"{s.Span}:{s.State}")))})");
        return segments;
    }

    static string Describe(IEnumerable<ServerInfo> servers, bool withQuant = false) =>
        servers.Any() ? string.Join(" ", servers.Select(s => $"{s.Span}:{s.State}" + (withQuant ? $":{s.Quant}" : ""))) : "none";

    static bool IsBanned(RoutingInputs inputs, ServerInfo s) => inputs.BannedPeers?.Contains(s.PeerId) == true;

    /// <summary>One-way delay from a measured RTT: half of it, the default when unknown, capped so ∞ stays usable.</summary>
    static double ToDelay(IReadOnlyDictionary<string, double>? rtts, string peer) =>
        rtts is not null && rtts.TryGetValue(peer, out var rtt) && !double.IsNaN(rtt) ? Math.Min(Math.Max(rtt, 0) / 2, MaxDelay) : DefaultDelay;

    /// <summary>
    /// Relay delay, and cache penalty for opening a session on <paramref name="server"/>. Its <c>cache_tokens_left</c> is already
    /// per token of one row across its whole span, so unlike Petals there is no × 2 × span-length factor; like
    /// Petals it assumes the worst case that the session uses the whole span.
    /// </summary>
    static double Penalty(ServerInfo server, RoutingInputs inputs) =>
        (inputs.CacheTokensNeeded is { } needed && server.CacheTokensLeft < needed ? CachePenalty : 0)
        + (server.IsRelayed ? RelayDelay : 0);

    static (double[] Dist, int[] Prev) Dijkstra(List<(int To, double Cost)>[] edges, int source)
    {
        var dist = Enumerable.Repeat(double.PositiveInfinity, edges.Length).ToArray();
        var prev = Enumerable.Repeat(-1, edges.Length).ToArray();
        // Ties go to the lower node id (servers in input order), so equal-cost routes are reproducible.
        var queue = new PriorityQueue<int, (double, int)>();
        dist[source] = 0;
        queue.Enqueue(source, (0, source));
        while (queue.TryDequeue(out var v, out var key))
        {
            if (key.Item1 > dist[v]) continue;
            foreach (var (to, cost) in edges[v])
            {
                double d = dist[v] + cost;
                if (d < dist[to])
                {
                    dist[to] = d;
                    prev[to] = v;
                    queue.Enqueue(to, (d, to));
                }
            }
        }
        return (dist, prev);
    }
}
