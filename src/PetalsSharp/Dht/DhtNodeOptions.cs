namespace PetalsSharp.Dht;

/// <summary>How a <see cref="DhtNode"/> listens, whom it trusts and how often it maintains its records.</summary>
public sealed record DhtNodeOptions
{
    /// <summary>Interface to listen on when the node hosts its own server (<see cref="DhtNode.StartAsync"/>).</summary>
    public string Host { get; init; } = "0.0.0.0";

    /// <summary>Port to listen on; 0 picks a free one (see <see cref="DhtNode.Address"/> for the result).</summary>
    public int Port { get; init; }

    /// <summary>"host:port" announced to peers instead of the bound address (NAT, containers, DNS names).</summary>
    public string? PublicAddress { get; init; }

    /// <summary>The node's key pair; an ephemeral one (a new id each run) when null.</summary>
    public NodeIdentity? Identity { get; init; }

    /// <summary>Private swarm secret; null = public swarm (no authentication headers at all).</summary>
    public SwarmKey? SwarmKey { get; init; }

    /// <summary>
    /// TLS on this node's port and on its calls to peers, with certificates on node keys (<c>Wire.PeerTls</c>).
    /// Every node of a swarm must agree; false (<c>--no-tls</c>) is for debugging and benchmarks.
    /// </summary>
    public bool Tls { get; init; } = true;

    /// <summary>Bucket size and replication factor (Kademlia's k).</summary>
    public int K { get; init; } = 20;

    /// <summary>Parallel requests of an iterative lookup (Kademlia's α).</summary>
    public int Alpha { get; init; } = 3;

    /// <summary>Deadline of one RPC; a peer slower than this counts as dead for that lookup.</summary>
    public TimeSpan RpcTimeout { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>
    /// How long joining (<see cref="DhtNode.BootstrapAsync"/>) keeps retrying initial peers that cannot be reached,
    /// with exponential backoff and a longer RPC deadline on each attempt. Zero tries once. Peers that answer and
    /// refuse (wrong swarm key, wrong id) fail at once whatever this is.
    /// </summary>
    public TimeSpan JoinTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>Latest expiration a stored record may have, measured from now.</summary>
    public TimeSpan MaxTtl { get; init; } = TimeSpan.FromHours(1);

    /// <summary>How often this node re-stores the records it owns on the current k closest nodes.</summary>
    public TimeSpan RepublishPeriod { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>How often this node pushes the replicas it holds to the k closest nodes it knows (survives churn).</summary>
    public TimeSpan ReplicatePeriod { get; init; } = TimeSpan.FromMinutes(2);

    /// <summary>A bucket untouched for this long is refreshed by a lookup of a random id in it.</summary>
    public TimeSpan RefreshPeriod { get; init; } = TimeSpan.FromMinutes(15);

    /// <summary>How often expired records are dropped.</summary>
    public TimeSpan PurgePeriod { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Most subkeys (owners) one key may have on this node.</summary>
    public int MaxSubkeysPerKey { get; init; } = 1000;

    /// <summary>Most bytes of records this node holds for others.</summary>
    public long MaxStoredBytes { get; init; } = 256L * 1024 * 1024;

    /// <summary>
    /// Entries one owner identity may hold on this node, across all keys. A server announces one entry per block it
    /// hosts plus a few per model, so honest owners stay far below it.
    /// </summary>
    public int MaxEntriesPerOwner { get; init; } = 4096;

    /// <summary>Requests per second one remote IP address may make (the refill rate of its token bucket).</summary>
    public double RequestsPerSecondPerAddress { get; init; } = 200;

    /// <summary>How many requests one address may make in a burst (the depth of its token bucket).</summary>
    public double RequestBurstPerAddress { get; init; } = 1000;

    /// <summary>Leave loopback addresses out of the per-address rate: a local swarm shares 127.0.0.1.</summary>
    public bool QuotaExemptsLoopback { get; init; } = true;

    /// <summary>Where the node reports joins, failed upkeep rounds and refused records; silent when null.</summary>
    public Microsoft.Extensions.Logging.ILogger? Logger { get; init; }

    /// <summary>More gRPC services for a node that hosts its own server (<see cref="DhtNode.StartAsync"/>): a relay, say.</summary>
    public Action<Microsoft.Extensions.DependencyInjection.IServiceCollection>? AddServices { get; init; }

    /// <summary>Maps the services <see cref="AddServices"/> added (with their middleware) into the node's app.</summary>
    public Action<Microsoft.AspNetCore.Builder.WebApplication>? MapServices { get; init; }

    /// <summary>Throws when an option is out of range.</summary>
    public void Validate()
    {
        if (Port is < 0 or > 65535) throw new ArgumentException($"port {Port} is not in 0..65535");
        if (K is < 1 or > DhtLimits.MaxContactsPerReply) throw new ArgumentException($"K must be in 1..{DhtLimits.MaxContactsPerReply}");
        if (Alpha < 1) throw new ArgumentException("Alpha must be at least 1");
        if (MaxSubkeysPerKey is < 1 or > DhtLimits.MaxEntriesPerReply)
            throw new ArgumentException($"MaxSubkeysPerKey must be in 1..{DhtLimits.MaxEntriesPerReply}");
        if (MaxStoredBytes < 0) throw new ArgumentException("MaxStoredBytes must not be negative");
        if (JoinTimeout < TimeSpan.Zero) throw new ArgumentException("JoinTimeout must not be negative");
        if (PublicAddress is not null && !DhtAddress.TryParse(PublicAddress, out _, out _))
            throw new ArgumentException($"public address '{PublicAddress}' is not HOST:PORT");
        foreach (var (name, value) in new[] { (nameof(RpcTimeout), RpcTimeout), (nameof(MaxTtl), MaxTtl), (nameof(RepublishPeriod), RepublishPeriod),
                     (nameof(ReplicatePeriod), ReplicatePeriod), (nameof(RefreshPeriod), RefreshPeriod), (nameof(PurgePeriod), PurgePeriod) })
            if (value <= TimeSpan.Zero) throw new ArgumentException($"{name} must be positive");
    }
}

/// <summary>Parsing of "host:port" and "host:port/ID_HEX" peer addresses.</summary>
public static class DhtAddress
{
    /// <summary>Splits "HOST:PORT" or "HOST:PORT/ID" (IPv6 hosts in brackets); the id is null when absent.</summary>
    public static bool TryParse(string text, out string address, out NodeId? id)
    {
        address = "";
        id = null;
        if (string.IsNullOrWhiteSpace(text) || text.Length > DhtLimits.MaxAddressLength) return false;
        text = text.Trim();
        int slash = text.LastIndexOf('/');
        if (slash >= 0)
        {
            if (!NodeId.TryParse(text[(slash + 1)..], out var parsed)) return false;
            id = parsed;
            text = text[..slash];
        }
        int colon = text.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(text[(colon + 1)..], System.Globalization.NumberStyles.None, null, out int port) || port is < 1 or > 65535)
            return false;
        var host = text[..colon];
        if (host.Contains('/') || host.Contains(' ') || (host.Contains(':') && !(host.StartsWith('[') && host.EndsWith(']')))) return false;
        address = text;
        return true;
    }

    /// <summary>Like <see cref="TryParse"/> but throws a message naming the expected forms.</summary>
    public static (string Address, NodeId? Id) Parse(string text) => TryParse(text, out var a, out var id)
        ? (a, id)
        : throw new ArgumentException($"'{text}' is not a peer address (HOST:PORT or HOST:PORT/ID_HEX)");
}
