using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using PetalsSharp.Swarm;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;

namespace PetalsSharp.Client;

/// <summary>How a client talks to servers.</summary>
public sealed record RemoteOptions
{
    /// <summary>Compression of activations in both directions (requests, and replies via output_compression).</summary>
    public Compression Compression { get; init; } = Compression.None;

    /// <summary>Deadline of one Forward/Backward call and of one inference step.</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromMinutes(3);

    /// <summary>Largest message sent or accepted; inference steps bigger than half of it are split along T.</summary>
    public int MaxMessageBytes { get; init; } = Protocol.DefaultMaxMessageBytes;

    /// <summary>Refuse servers whose block fingerprints differ from the local checkpoint's (when it has those blocks).</summary>
    public bool VerifyWeights { get; init; } = true;

    /// <summary>
    /// Share of inference steps whose every hop is recomputed on a second server holding the same blocks and
    /// compared (a third decides a disagreement; a server caught lying is banned for the session). 0 turns it off.
    /// </summary>
    public double VerifyRate { get; init; } = 0.05;

    /// <summary>Seed of the draws that pick checked steps (reproducible runs and tests); null = random.</summary>
    public int? VerifySeed { get; init; }

    /// <summary>
    /// How many times a failed hop (lost connection, timeout, error status) is replaced before the call fails for
    /// good. Each retry bans the failed server, plans a replacement for exactly its blocks and replays the history.
    /// </summary>
    public int MaxRetries { get; init; } = 5;

    /// <summary>
    /// How long a call may wait for room when servers answer busy (RESOURCE_EXHAUSTED). Busy answers are load, not
    /// failures: they do not use up <see cref="MaxRetries"/>, and the client routes around each busy server for its
    /// retry hint, then asks again, until this much time has passed.
    /// </summary>
    public TimeSpan BusyTimeout { get; init; } = TimeSpan.FromMinutes(2);

    /// <summary>First ban of a failed server; it doubles with every consecutive failure (capped at 5 min).</summary>
    public TimeSpan BanTime { get; init; } = TimeSpan.FromSeconds(15);

    /// <summary>Delay before retry n (n ≥ 1) is min(MinBackoff · 2^(n-2), 10 s); the first retry is immediate.</summary>
    public TimeSpan MinBackoff { get; init; } = TimeSpan.FromMilliseconds(200);

    /// <summary>
    /// Server-to-server push for inference steps: the client sends a step to the first server only, each server
    /// relays its output to the next. Off = the client drives every hop itself (one round trip per server).
    /// </summary>
    public bool UseServerToServer { get; init; } = true;

    /// <summary>
    /// Deadline of the Info call that proves a server discovered in the DHT is alive before it is routed through. A
    /// record is only a signed claim (anyone can sign one with a fresh key), so an address that never answers must not
    /// cost more than this. Servers given explicitly, and the last-resort retry when the quick probes leave blocks
    /// uncovered, get <see cref="ConnectTimeout"/>.
    /// </summary>
    public TimeSpan ProbeTimeout { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>Deadline of the Info call to servers given explicitly (and to every candidate when nothing else covers).</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Once the servers that answered cover every block, how much longer connecting waits for the other probes
    /// (they go on in the background and join the pool when they answer).
    /// </summary>
    public TimeSpan ProbeGrace { get; init; } = TimeSpan.FromMilliseconds(500);

    /// <summary>
    /// How long an address that failed its probe is skipped by every client in this process (doubling with each
    /// failure in a row, up to 16×), unless the blocks cannot be covered without it.
    /// </summary>
    public TimeSpan UnreachableMemory { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>How often the client re-measures RTTs and looks for new servers in the background (0 = never).</summary>
    public TimeSpan RefreshPeriod { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>Use only these servers (addresses as the client knows them, or peer ids); null = any.</summary>
    public IReadOnlySet<string>? AllowedServers { get; init; }

    /// <summary>Never use these servers (addresses or peer ids).</summary>
    public IReadOnlySet<string>? BlockedServers { get; init; }

    /// <summary>Private swarm secret sent with every call; null in a public swarm.</summary>
    public PetalsSharp.Dht.SwarmKey? SwarmKey { get; init; }

    /// <summary>
    /// TLS to servers and DHT nodes, each checked against the node id it was found under (its record's signer, or
    /// the "/ID" of an initial peer). False (<c>--no-tls</c>) talks to a swarm that runs without TLS.
    /// </summary>
    public bool Tls { get; init; } = true;

    /// <summary>
    /// Server-side LoRA adapter to run every block with (sent as <c>active_adapter</c> in every Forward, Backward and
    /// inference session); only servers that announce it are routed through. Null or empty = base weights.
    /// </summary>
    public string? ActiveAdapter { get; init; }

    /// <summary>Route only through servers of the exact weights: a quantized span (int8, nf4) is never used.</summary>
    public bool RequireExact { get; init; }

    /// <summary>How long joining the DHT retries unreachable initial peers (zero = one try).</summary>
    public TimeSpan JoinTimeout { get; init; } = SwarmReader.ClientJoinTimeout;

    /// <summary>Called with the <c>route: ...</c> line whenever a chain is chosen.</summary>
    public Action<string>? OnRoute { get; init; }

    /// <summary>
    /// Where the client reports what it recovers from on its own: failed servers it bans, failovers, and background
    /// refreshes that fail (the next period tries again). Nothing is logged by default.
    /// </summary>
    public ILogger Logger { get; init; } = NullLogger.Instance;
}
