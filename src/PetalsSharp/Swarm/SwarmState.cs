using PetalsSharp.Wire.V1;

namespace PetalsSharp.Swarm;

/// <summary>One server as the swarm sees it: who (node id), where, what it serves and how well.</summary>
public sealed record ServerInfo(
    string PeerId,
    string Address,
    int Start,
    int End,
    ServerState State,
    double Throughput,
    double InferenceRps,
    long CacheTokensLeft,
    string PublicName,
    string WeightsDtype,
    string Version,
    string Fingerprint,
    IReadOnlyList<string> Adapters,
    DateTimeOffset Expiration)
{
    public ServerSpan Span => new(Address, Start, End);

    /// <summary>
    /// How to dial it (see <see cref="Wire.PeerTarget"/>): over TLS, pinned to the key that signed its record. A
    /// server known only by address (PeerId = address) is not pinned.
    /// </summary>
    public string Dial(bool tls) => Wire.PeerTarget.Dial(Address, tls, PeerId);

    /// <summary>The block format its linears are served in: "none" (exact), "int8", "nf4", or what a newer server announced.</summary>
    public string Quant { get; init; } = "none";

    /// <summary>Whether it serves the exact weights (what <c>--require-exact</c> routes through).</summary>
    public bool IsExact => Quant == "none";

    /// <summary>An announced format, bounded (hostile input): empty (an older server) is "none"; anything else is kept if short.</summary>
    public static string ReadQuant(string announced) =>
        string.IsNullOrEmpty(announced) ? "none" : announced.Length <= 16 && announced.All(char.IsAsciiLetterOrDigit) ? announced : "unknown";

    /// <summary>"HOST:PORT/ID" of the relay <see cref="Address"/> belongs to, or "" for a server clients dial directly.</summary>
    public string Relay { get; init; } = "";

    /// <summary>Whether clients reach it through a relay.</summary>
    public bool IsRelayed => Relay.Length > 0;

    /// <summary>"direct" or "relayed", as <c>petals swarm</c> shows it.</summary>
    public string Reachability => IsRelayed ? "relayed" : "direct";

    /// <summary>An announced relay name, bounded (hostile input): at most 256 printable ASCII characters, else dropped.</summary>
    public static string ReadRelay(string announced) =>
        announced.Length <= 256 && announced.All(c => c is > ' ' and < (char)127) ? announced : "unknown";

    /// <summary>Round trips (seconds) this server measured to servers that could follow it, by their address.</summary>
    public IReadOnlyDictionary<string, double> NextPings { get; init; } = new Dictionary<string, double>();

    /// <summary>Reads a DHT entry's value; null when it is not a valid announcement for this model.</summary>
    public static ServerInfo? FromAnnouncement(string peerId, ServerAnnouncement a, int numBlocks, DateTimeOffset expiration)
    {
        if (a.StartBlock < 0 || a.EndBlock > numBlocks || a.StartBlock >= a.EndBlock) return null;
        if (string.IsNullOrWhiteSpace(a.Address) || a.Address.Length > 256) return null;
        if (!double.IsFinite(a.Throughput) || a.Throughput < 0) return null;
        return new ServerInfo(peerId, a.Address, a.StartBlock, a.EndBlock, a.State, a.Throughput,
            double.IsFinite(a.InferenceRps) ? a.InferenceRps : 0, a.CacheTokensLeft, a.PublicName, a.WeightsDtype,
            a.SoftwareVersion, a.WeightsFingerprint, ReadAdapters(a.Adapters), expiration)
        {
            Quant = ReadQuant(a.Quant),
            Relay = ReadRelay(a.Relay),
            NextPings = a.NextPings.Where(p => p.Key.Length <= 256 && double.IsFinite(p.Value) && p.Value >= 0).Take(64)
                .ToDictionary(p => p.Key, p => p.Value),
        };
    }

    /// <summary>Adapter names as announced, bounded (announcements are hostile input): at most 64 names of ≤ 64 chars.</summary>
    public static IReadOnlyList<string> ReadAdapters(IEnumerable<string> names) =>
        names.Where(n => n.Length is > 0 and <= Models.Lora.LoraNames.MaxLength).Distinct(StringComparer.Ordinal).Take(64).ToList();
}

/// <summary>
/// An immutable snapshot of one model's swarm: every server that announced itself, keyed by peer id. Routing,
/// coverage and the dashboard are pure functions of it.
/// </summary>
public sealed record SwarmSnapshot(string DhtPrefix, int NumBlocks, IReadOnlyList<ServerInfo> Servers)
{
    /// <summary>Servers clients may route through now.</summary>
    public IReadOnlyList<ServerInfo> Online => Servers.Where(s => s.State == ServerState.Online).ToList();

    /// <summary>Per block: how many online servers hold it and their summed throughput.</summary>
    public IReadOnlyList<(int Servers, double Throughput)> Coverage()
    {
        var result = new (int, double)[NumBlocks];
        foreach (var s in Online)
            for (int i = s.Start; i < s.End; i++)
                result[i] = (result[i].Item1 + 1, result[i].Item2 + s.Throughput);
        return result;
    }

    /// <summary>Blocks no online server holds.</summary>
    public IReadOnlyList<int> Uncovered() =>
        Coverage().Select((c, i) => (c, i)).Where(x => x.c.Servers == 0).Select(x => x.i).ToList();

    /// <summary>Merges per-block records (one server appears under each of its blocks) into one entry per peer.</summary>
    public static SwarmSnapshot FromRecords(string prefix, int numBlocks, IEnumerable<ServerInfo> records) =>
        new(prefix, numBlocks, records
            .GroupBy(r => r.PeerId)
            .Select(g => g.OrderByDescending(r => r.Expiration).First())
            .OrderBy(s => s.Start).ThenBy(s => s.Address, StringComparer.Ordinal)
            .ToList());
}
