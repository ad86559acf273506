// Only the fields that need explaining have <param> tags; the rest are named well enough.
#pragma warning disable CS1573

namespace PetalsSharp.Api.Dashboard;

// The dashboard's JSON (GET /api/v1/swarm) is exactly these records, serialized with snake_case names.
// docs/dashboard.md documents the schema; change both together.

/// <summary>Everything the dashboard shows, at one instant.</summary>
/// <param name="GeneratedAt">When the snapshot was built.</param>
/// <param name="MinCoverage">Blocks held by fewer online servers than this are flagged.</param>
/// <param name="Models">Every model in the swarm's model index (and models whose servers just vanished).</param>
/// <param name="Warnings">Uncovered or thin blocks, offline or vanished servers, failed reads.</param>
/// <param name="Error">Why the last read of the DHT failed (the data shown is then older), or null.</param>
public sealed record SwarmView(
    DateTimeOffset GeneratedAt,
    int MinCoverage,
    IReadOnlyList<ModelView> Models,
    IReadOnlyList<SwarmWarning> Warnings,
    string? Error = null)
{
    /// <summary>Before the first read of the DHT.</summary>
    public static SwarmView Empty(int minCoverage) => new(DateTimeOffset.UtcNow, minCoverage, [], [], null);
}

/// <summary>One model: coverage of each block, the servers (including vanished ones for a while) and their pings.</summary>
public sealed record ModelView(
    string DhtPrefix,
    string Repository,
    string ModelType,
    int NumBlocks,
    IReadOnlyList<BlockCoverage> Blocks,
    IReadOnlyList<ServerView> Servers,
    IReadOnlyList<PingView> Pings);

/// <summary>How well one block is served: by how many ONLINE servers, with what summed throughput (tokens/s).</summary>
/// <param name="Status"><c>ok</c>, <c>low</c> (fewer servers than the minimum coverage) or <c>uncovered</c>.</param>
public sealed record BlockCoverage(int Block, int Servers, double Throughput, string Status);

/// <summary>One server as announced (or last announced, for a <c>GONE</c> one).</summary>
/// <param name="State"><c>ONLINE</c>, <c>JOINING</c>, <c>OFFLINE</c> (announced it stopped) or <c>GONE</c> (its records expired).</param>
/// <param name="Expires">When its current records expire unless it re-announces.</param>
/// <param name="LastSeen">When the dashboard last read a live record of it.</param>
public sealed record ServerView(
    string PeerId,
    string PublicName,
    string Address,
    int Start,
    int End,
    string State,
    double Throughput,
    double InferenceRps,
    long CacheTokensLeft,
    string Version,
    string Dtype,
    IReadOnlyList<string> Adapters,
    DateTimeOffset Expires,
    DateTimeOffset LastSeen)
{
    /// <summary>The block format its linears are served in: <c>none</c> (exact), <c>int8</c> or <c>nf4</c>.</summary>
    public string Quant { get; init; } = "none";

    /// <summary><c>direct</c>, or <c>relayed</c> when clients reach it through <see cref="Relay"/>.</summary>
    public string Reachability { get; init; } = "direct";

    /// <summary>"HOST:PORT/ID" of its relay, or "" when direct.</summary>
    public string Relay { get; init; } = "";
}

/// <summary>A round trip a server measured to a server that could follow it (announced next_pings).</summary>
/// <param name="Unreachable">The ping hit the announced cap (<see cref="PetalsSharp.Swarm.RoutePlanner.MaxDelay"/>): no answer.</param>
public sealed record PingView(string FromPeerId, string From, string To, double Ms, bool Unreachable);

/// <summary>Something an operator should look at.</summary>
/// <param name="Kind"><c>uncovered</c>, <c>low_coverage</c>, <c>server_offline</c>, <c>server_gone</c>, <c>no_models</c> or <c>read_failed</c>.</param>
/// <param name="Severity"><c>error</c>, <c>warning</c> or <c>info</c>.</param>
/// <param name="Model">The model's DHT prefix ("" for the whole swarm).</param>
/// <param name="Blocks">The blocks concerned (empty for a server warning).</param>
/// <param name="PeerId">The server concerned, or null.</param>
public sealed record SwarmWarning(string Kind, string Severity, string Model, string Message, IReadOnlyList<int> Blocks, string? PeerId);
