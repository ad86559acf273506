using PetalsSharp.Models;
using PetalsSharp.Wire;
using static TorchSharp.torch;

namespace PetalsSharp.Server;

/// <summary>How a <see cref="BlockServer"/> is set up: which blocks it serves, where it listens, its limits.</summary>
public sealed record ServerOptions
{
    /// <summary>The default port, 31330 (Petals' own default is 31330 too); 0 picks a free port.</summary>
    public const int DefaultPort = 31330;

    /// <summary>Default KV-cache room: 8192 tokens of one row across the whole span.</summary>
    public const long DefaultCacheTokens = 8192;

    /// <summary>Hugging Face model folder.</summary>
    public required string ModelDir { get; init; }

    /// <summary>First served block (inclusive) of a fixed span; ignored with <see cref="NumBlocks"/>.</summary>
    public int StartBlock { get; init; }

    /// <summary>End of a fixed span (exclusive); ignored with <see cref="NumBlocks"/>.</summary>
    public int EndBlock { get; init; }

    /// <summary>
    /// Serve this many blocks wherever the swarm needs them most (chosen after joining the DHT, before loading)
    /// and move when rebalancing pays off. Null = the fixed span <see cref="StartBlock"/>:<see cref="EndBlock"/>.
    /// </summary>
    public int? NumBlocks { get; init; }

    /// <summary>Whether the server picks (and may change) its blocks itself.</summary>
    public bool AutoPlaced => NumBlocks is not null;

    /// <summary>Upper bound of the random wait before choosing blocks, so servers started together do not all pick the same gap.</summary>
    public TimeSpan PlacementDelay { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>How often an auto-placed server asks whether to move (±50% jitter); zero disables rebalancing.</summary>
    public TimeSpan RebalancePeriod { get; init; } = TimeSpan.FromSeconds(120);

    /// <summary>Petals' balance_quality: move when bottleneck before/after is below it (see <see cref="Swarm.BlockSelection.QualityFromThreshold"/>).</summary>
    public double BalanceQuality { get; init; } = Swarm.BlockSelection.QualityFromThreshold(0.25);

    /// <summary>Announce this throughput instead of measuring (<c>--throughput N</c>).</summary>
    public double? FixedThroughput { get; init; }

    /// <summary>Measure again even when the throughput cache has an entry (<c>--throughput eval</c>).</summary>
    public bool RemeasureThroughput { get; init; }

    /// <summary>The throughput cache file; null = <see cref="ThroughputCache.DefaultPath"/>.</summary>
    public string? ThroughputCachePath { get; init; }

    /// <summary>Interface to bind; "0.0.0.0" (default) listens everywhere.</summary>
    public string Host { get; init; } = "0.0.0.0";

    /// <summary>Port to bind (default <see cref="DefaultPort"/>); 0 lets the OS choose, see <see cref="BlockServer.Address"/>.</summary>
    public int Port { get; init; } = DefaultPort;

    /// <summary>Address announced to clients; defaults to the bound host:port (127.0.0.1 when bound to 0.0.0.0).</summary>
    public string? PublicAddress { get; init; }

    /// <summary>How weights are held in memory; compute is float32 either way.</summary>
    public ScalarType WeightDtype { get; init; } = ScalarType.Float32;

    /// <summary>
    /// Fetches the weight files of blocks [start, end) before they are loaded: a hub model whose span the swarm
    /// chooses downloads only that span's shards, once it knows it (and again when it moves). Null: the folder has
    /// every file.
    /// </summary>
    public Func<int, int, CancellationToken, Task>? FetchBlocks { get; init; }

    /// <summary>The block format the served linears are packed in at load (none: exact, in <see cref="WeightDtype"/>).</summary>
    public Models.Quant.QuantFormat Quant { get; init; } = Models.Quant.QuantFormat.None;

    /// <summary>
    /// How KV pages store keys and values; null follows the weights as HF and Petals do (a bfloat16 or float16
    /// checkpoint gets a cache of its dtype, float32 stays exact). Attention computes in float32 either way.
    /// </summary>
    public ScalarType? KvDtype { get; init; }

    /// <summary><see cref="KvDtype"/>, or the weights' dtype when it is not given.</summary>
    public ScalarType ResolvedKvDtype => KvDtype ?? (WeightDtype is ScalarType.BFloat16 or ScalarType.Float16 ? WeightDtype : ScalarType.Float32);

    /// <summary>KV-cache room in (row × position) slots for the whole span; default <see cref="DefaultCacheTokens"/>.</summary>
    public long? CacheTokens { get; init; }

    /// <summary>KV-cache room in bytes; converted to tokens with the span's cache bytes per token. Wins over <see cref="CacheTokens"/>.</summary>
    public long? CacheBytes { get; init; }

    /// <summary>
    /// Fraction of the KV cache that the sessions of one client (one IP address, see <see cref="ClientKey"/>) may
    /// hold together; a session past it gets RESOURCE_EXHAUSTED. Default 0.5: one client can never lock the others
    /// out, and clients behind one NAT still have half the cache between them. 1 turns the cap off.
    /// </summary>
    public double MaxCacheShare { get; init; } = 0.5;

    /// <summary>
    /// Sessions are promised their max_length's pages at open, up to this multiple of the cache (memory is taken only
    /// as they grow). 1 (default): an admitted session never runs out of room. Above 1, more sessions are admitted and
    /// a step that finds no page free is answered busy (the client replays it elsewhere).
    /// </summary>
    public double CacheOvercommit { get; init; } = 1;

    /// <summary>Largest max_length a session may ask for; default min(max_position_embeddings, 8192).</summary>
    public int? MaxSessionLength { get; init; }

    /// <summary>
    /// A session that runs no new tokens for this long ends with DEADLINE_EXCEEDED and frees its cache. Steps
    /// without tokens and replays of the last step do not count: they cost the client nothing and would otherwise
    /// keep a session's cache for ever.
    /// </summary>
    public TimeSpan SessionIdleTimeout { get; init; } = TimeSpan.FromSeconds(300);

    /// <summary>
    /// How long a Forward/Backward call may go without sending a message while it delivers its tensors (up to a
    /// day). A client that stalls mid-request gets
    /// DEADLINE_EXCEEDED, so a stuck or hostile peer cannot hold a half-assembled tensor forever.
    /// </summary>
    public TimeSpan RequestReadTimeout { get; init; } = TimeSpan.FromSeconds(120);

    /// <summary>Largest single gRPC message, both directions.</summary>
    public int MaxMessageBytes { get; init; } = Protocol.DefaultMaxMessageBytes;

    /// <summary>
    /// Ceiling on any tensor assembled from Forward/Backward chunks. Below it each tensor is also held to what the
    /// model can use (MaxRequestTokens × hidden size × 4 B; deep prompts that per block), checked on its first chunk.
    /// </summary>
    public long MaxTensorBytes { get; init; } = Protocol.DefaultMaxTensorBytes;

    /// <summary>
    /// Bytes all Forward/Backward calls together may hold in received tensors (see <see cref="RequestMemory"/>);
    /// a call that would pass it fails with RESOURCE_EXHAUSTED. Default 2 GiB.
    /// </summary>
    public long MaxRequestMemoryBytes { get; init; } = 2L << 30;

    /// <summary>Largest batch a session may open with (each row costs max_length cache slots per block).</summary>
    public int MaxBatchSize { get; init; } = 256;

    /// <summary>Largest B×T of one Forward/Backward; bounds the time one request holds the compute thread.</summary>
    public int MaxRequestTokens { get; init; } = 16384;

    /// <summary>
    /// Largest B×T of one compute task of a prefill: a longer inference step runs in chunks of about this many rows,
    /// each queued behind the steps that arrived meanwhile, so a long prompt does not stall sessions that are decoding.
    /// </summary>
    public int PrefillChunkRows { get; init; } = 128;

    /// <summary>Announced model name; defaults to the model folder's name.</summary>
    public string? ModelName { get; init; }

    /// <summary>DHT key prefix; defaults to the model name with '.' and ' ' replaced by '-'.</summary>
    public string? DhtPrefix { get; init; }

    /// <summary>The model name announced in Info.</summary>
    public string ResolvedModelName => ModelName ?? Swarm.ModelNames.FromFolder(ModelDir);

    /// <summary>The DHT prefix announced in Info.</summary>
    public string ResolvedDhtPrefix => DhtPrefix ?? Swarm.ModelNames.DhtPrefix(ResolvedModelName);

    /// <summary>DHT peers to join ("HOST:PORT" or "HOST:PORT/ID"); empty with <see cref="NewSwarm"/> false = no DHT.</summary>
    public IReadOnlyList<string> InitialPeers { get; init; } = [];

    /// <summary>
    /// Where server-to-server push may go besides the servers the DHT announces for the block after this span:
    /// <c>HOST:PORT</c>, or <c>HOST</c> for any port of it. Without a DHT this list is the only way to push; empty
    /// (the default) then means clients drive every hop themselves.
    /// </summary>
    public IReadOnlyList<string> PushPeers { get; init; } = [];

    /// <summary>Start a new swarm: host a DHT node without joining anyone.</summary>
    public bool NewSwarm { get; init; }

    /// <summary>Key pair file: a restarted server keeps its node id. Null = a fresh identity each start.</summary>
    public string? IdentityPath { get; init; }

    /// <summary>Private swarm secret: only nodes with the same key can join, store or be served.</summary>
    public Dht.SwarmKey? SwarmKey { get; init; }

    /// <summary>
    /// TLS on the port (block service and DHT) and on pushes and pings to other servers, with a certificate on the
    /// node's identity key. False (<c>--no-tls</c>) is for debugging and benchmarks; a swarm must agree on it.
    /// </summary>
    public bool Tls { get; init; } = true;

    /// <summary>How long joining keeps retrying initial peers that cannot be reached (see <see cref="Dht.DhtNodeOptions.JoinTimeout"/>).</summary>
    public TimeSpan JoinTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>How often the server re-announces itself; records expire after twice this.</summary>
    public TimeSpan UpdatePeriod { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>Port of the HTTP/1.1 <c>GET /metrics</c> endpoint (Prometheus text; 0 = any free port); null = none.</summary>
    public int? MetricsPort { get; init; }

    /// <summary>PEFT LoRA adapters to hold, each <c>DIR</c> or <c>NAME=DIR</c> (name defaults to the folder's name).</summary>
    public IReadOnlyList<string> Adapters { get; init; } = [];

    /// <summary>Name shown in the swarm's tables.</summary>
    public string? PublicName { get; init; }

    /// <summary>How clients reach this server (<c>--reachability</c>): checked at start, direct, or through a relay with no inbound port.</summary>
    public Reachability Reachability { get; init; } = Reachability.Auto;

    /// <summary>Relays to try first in relay mode, <c>HOST:PORT[/ID]</c>; the DHT's relays follow.</summary>
    public IReadOnlyList<string> RelayPeers { get; init; } = [];

    /// <summary>Also relay for servers behind NAT (<c>--relay</c>), with these limits; null = not a relay.</summary>
    public Relay.RelayOptions? Relay { get; init; }

    /// <summary>Whether the server hosts a DHT node and announces itself.</summary>
    public bool UsesDht => NewSwarm || InitialPeers.Count > 0;

    /// <summary>max_length limit for this model.</summary>
    public int ResolveMaxSessionLength(ModelConfig config) =>
        MaxSessionLength ?? Math.Min(config.MaxPositionEmbeddings, 8192);

    /// <summary>Cache room in tokens, given the KV bytes one token of one row costs across the span.</summary>
    public long ResolveCacheTokens(long cacheBytesPerToken) =>
        CacheBytes is { } bytes ? bytes / Math.Max(1, cacheBytesPerToken) : CacheTokens ?? DefaultCacheTokens;

    /// <summary>
    /// Blocks that fit in <paramref name="budgetBytes"/>: each costs its weights in the served dtype (+1%, as
    /// Petals) plus its share of the KV cache (<see cref="CacheTokens"/> tokens per block in <see cref="ResolvedKvDtype"/>; a
    /// <see cref="CacheBytes"/> budget is for the whole span and comes off the top). At least 1, at most the model.
    /// </summary>
    public int BlocksForMemory(ModelConfig config, long budgetBytes)
    {
        long parameters = config.Family.BlockTensors(config, 0).Sum(t => t.Shape.Aggregate(1L, (a, d) => a * d));
        double elementSize = Quant != Models.Quant.QuantFormat.None ? Models.Quant.QuantFormats.ResidentBitsPerWeight(Quant) / 8
            : WeightDtype is ScalarType.BFloat16 or ScalarType.Float16 ? 2 : 4;
        long blockBytes = (long)(parameters * elementSize * 1.01);
        long kvBytesPerToken = 2L * config.NumKvHeads * config.HeadDim * (ResolvedKvDtype == ScalarType.Float32 ? 4 : 2);
        long perBlock = CacheBytes is { } total ? blockBytes : blockBytes + (CacheTokens ?? DefaultCacheTokens) * kvBytesPerToken;
        long room = budgetBytes - (CacheBytes ?? 0);
        return (int)Math.Clamp(room / Math.Max(1, perBlock), 1, config.NumLayers);
    }

    /// <summary>Throws <see cref="ArgumentException"/> on a setting no server could run with.</summary>
    public void Validate()
    {
        if (NumBlocks is { } n)
        {
            if (n < 1) throw new ArgumentException($"--num-blocks {n} must be at least 1");
            if (!UsesDht) throw new ArgumentException("choosing blocks needs a swarm: give --initial-peers (or --new-swarm)");
        }
        else if (StartBlock < 0 || EndBlock <= StartBlock)
            throw new ArgumentException($"block span {StartBlock}:{EndBlock} is empty or negative (START < END, both ≥ 0)");
        if (PlacementDelay < TimeSpan.Zero || RebalancePeriod < TimeSpan.Zero) throw new ArgumentException("placement delay and rebalance period must be ≥ 0");
        if (!(BalanceQuality >= 0)) throw new ArgumentException($"balance quality {BalanceQuality} must be ≥ 0");
        if (FixedThroughput is { } t && !(t > 0 && double.IsFinite(t))) throw new ArgumentException($"throughput {t} must be a positive number");
        if (Port is < 0 or > 65535) throw new ArgumentException($"port {Port} is outside [0, 65535]");
        if (MetricsPort is < 0 or > 65535) throw new ArgumentException($"metrics port {MetricsPort} is outside [0, 65535]");
        if (CacheTokens is < 0) throw new ArgumentException($"cache tokens {CacheTokens} is negative");
        if (CacheBytes is < 0) throw new ArgumentException($"cache bytes {CacheBytes} is negative");
        if (MaxSessionLength is < 1) throw new ArgumentException($"max session length {MaxSessionLength} must be at least 1");
        if (!(MaxCacheShare > 0 && MaxCacheShare <= 1)) throw new ArgumentException($"max cache share {MaxCacheShare} must be in (0, 1]");
        if (!(CacheOvercommit >= 1 && CacheOvercommit <= 100)) throw new ArgumentException($"--cache-overcommit must be in [1, 100] (got {CacheOvercommit})");
        if (SessionIdleTimeout <= TimeSpan.Zero) throw new ArgumentException("session idle timeout must be positive");
        // CancelAfter takes at most ~49 days; a day is already far past any real gap between chunks.
        if (RequestReadTimeout <= TimeSpan.Zero || RequestReadTimeout > TimeSpan.FromDays(1))
            throw new ArgumentException("request read timeout must be positive and at most a day (86400 s)");
        if (MaxRequestMemoryBytes <= 0) throw new ArgumentException("request memory limit must be positive");
        if (MaxMessageBytes < 1024) throw new ArgumentException($"max message bytes {MaxMessageBytes} is too small");
        if (MaxBatchSize < 1 || MaxRequestTokens < 1) throw new ArgumentException("batch and token limits must be positive");
        if (PrefillChunkRows < 1) throw new ArgumentException($"the prefill chunk must be at least 1 row (got {PrefillChunkRows})");
        if (JoinTimeout < TimeSpan.Zero) throw new ArgumentException("join timeout must not be negative");
        if (UpdatePeriod < TimeSpan.FromMilliseconds(100)) throw new ArgumentException("update period must be at least 0.1 s");
        if (Reachability == Reachability.Relay && !UsesDht)
            throw new ArgumentException("--reachability relay needs a swarm: clients find a relayed server's address in the DHT (give --initial-peers)");
        if (Reachability == Reachability.Relay && Relay is not null)
            throw new ArgumentException("a server reached through a relay cannot be a relay itself: drop --relay or --reachability relay");
        Relay?.Validate();
        foreach (var peer in RelayPeers)
            if (!Dht.DhtAddress.TryParse(peer, out _, out _)) throw new ArgumentException($"relay '{peer}' is not HOST:PORT or HOST:PORT/ID");
        if (NewSwarm && InitialPeers.Count > 0) throw new ArgumentException("--new-swarm starts a swarm alone: give it or --initial-peers, not both");
        if (ResolvedDhtPrefix.Length == 0 || ResolvedDhtPrefix.Contains('.') || ResolvedDhtPrefix.Contains(' '))
            throw new ArgumentException($"DHT prefix '{ResolvedDhtPrefix}' must be non-empty without '.' or ' '");
    }
}

/// <summary>How clients reach a server (<c>--reachability</c>).</summary>
public enum Reachability
{
    /// <summary>Ask peers to dial the announced address at start; relay mode if none can.</summary>
    Auto,

    /// <summary>Announce the address as it is, unchecked.</summary>
    Direct,

    /// <summary>Open no inbound port (a Unix socket only) and be reached through a relay.</summary>
    Relay,
}
