using Grpc.Core;

namespace PetalsSharp.Server;

/// <summary>
/// The KV-cache budget of a span, counted in block-token slots: a session of batch B and max_length M over k
/// blocks holds B·M·k slots. Counting per block (not per span) lets a session over part of the span cost less.
/// Allocation never waits: like Petals with its default alloc_timeout of 0, a full cache refuses at once.
/// One client (see <see cref="ClientKey"/>) may hold at most a share of the slots, so that a single caller cannot
/// lock everyone else out for as long as it keeps its sessions open.
/// </summary>
public sealed class CacheBudget
{
    readonly object _lock = new();
    readonly int _spanLength;
    readonly double _maxClientShare;
    readonly Dictionary<string, long> _byClient = [];   // only clients holding slots: at most one entry per open session
    long _used;

    /// <param name="cacheTokens">Tokens of one row the whole span can hold.</param>
    /// <param name="spanLength">Blocks in the span.</param>
    /// <param name="maxClientShare">Fraction of the slots one client may hold, in (0, 1].</param>
    public CacheBudget(long cacheTokens, int spanLength, double maxClientShare = 1)
    {
        if (spanLength <= 0) throw new ArgumentOutOfRangeException(nameof(spanLength));
        ArgumentOutOfRangeException.ThrowIfNegative(cacheTokens);
        if (!(maxClientShare > 0 && maxClientShare <= 1)) throw new ArgumentOutOfRangeException(nameof(maxClientShare), "must be in (0, 1]");
        _spanLength = spanLength;
        _maxClientShare = maxClientShare;
        TotalSlots = checked(cacheTokens * spanLength);
        MaxClientSlots = (long)Math.Floor(TotalSlots * maxClientShare);
    }

    /// <summary>Block-token slots in all.</summary>
    public long TotalSlots { get; }

    /// <summary>Block-token slots one client may hold at once.</summary>
    public long MaxClientSlots { get; }

    /// <summary>Slots held by open sessions.</summary>
    public long UsedSlots { get { lock (_lock) return _used; } }

    /// <summary>Free slots divided by the span length: how many tokens of one row a full-span session could still get.</summary>
    public long CacheTokensLeft { get { lock (_lock) return (TotalSlots - _used) / _spanLength; } }

    /// <summary>Slots the sessions of <paramref name="client"/> hold.</summary>
    public long HeldBy(string client) { lock (_lock) return _byClient.GetValueOrDefault(client); }

    /// <summary>Reserves room for a session of <paramref name="client"/>; throws RESOURCE_EXHAUSTED when it does not fit.</summary>
    public CacheLease Allocate(int batch, int maxLength, int blocks, string client = ClientKey.Unknown)
    {
        if (batch <= 0 || maxLength <= 0 || blocks <= 0 || blocks > _spanLength)
            throw new ArgumentOutOfRangeException(nameof(batch), "batch, max length and blocks must be positive");
        long slots = (long)batch * maxLength * blocks;
        lock (_lock)
        {
            long held = _byClient.GetValueOrDefault(client);
            // The share first: a request past it is refused even on an empty server, and the client should hear why.
            // Without a cap (share 1) "cache full" is the whole truth.
            if (MaxClientSlots < TotalSlots && held + slots > MaxClientSlots)
                throw Busy(slots > MaxClientSlots ? null : RetryAfter,
                    $"cache share exceeded: batch {batch} × max_length {maxLength} × {blocks} blocks needs {slots} slots and client {client} " +
                    $"already holds {held}; one client may hold at most {MaxClientSlots} of {TotalSlots} slots " +
                    $"(max_cache_share {_maxClientShare.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture)}); close sessions or use a smaller batch or max_length");
            long free = TotalSlots - _used;
            if (slots > free)
                throw Busy(slots > TotalSlots ? null : RetryAfter,
                    $"cache full: batch {batch} × max_length {maxLength} × {blocks} blocks needs {slots} slots, {free} of {TotalSlots} are free " +
                    $"(cache_tokens_left {free / _spanLength})");
            _used += slots;
            _byClient[client] = held + slots;
        }
        return new CacheLease(this, client, slots);
    }

    /// <summary>How long a busy answer tells the client to go elsewhere before asking again (sessions end within seconds).</summary>
    public static readonly TimeSpan RetryAfter = TimeSpan.FromSeconds(1);

    /// <summary>
    /// A busy answer: RESOURCE_EXHAUSTED with a retry hint in the <c>grpc-retry-pushback-ms</c> trailer, so the client
    /// routes around this server for a while and may come back, instead of counting it as failed.
    /// </summary>
    /// <param name="retryAfter">The hint; null for a request that can never fit here (it carries no hint, so the client
    /// goes elsewhere and does not wait for this server).</param>
    /// <param name="message">What is full, in numbers.</param>
    public static RpcException Busy(TimeSpan? retryAfter, string message) => retryAfter is { } after
        ? new(new Status(StatusCode.ResourceExhausted, message), new Metadata
        {
            { Wire.Protocol.RetryPushbackTrailer, ((long)after.TotalMilliseconds).ToString(System.Globalization.CultureInfo.InvariantCulture) },
        })
        : new(new Status(StatusCode.ResourceExhausted, message));

    internal void Release(string client, long slots)
    {
        lock (_lock)
        {
            _used -= slots;
            long held = _byClient.GetValueOrDefault(client) - slots;
            if (held > 0) _byClient[client] = held;
            else _byClient.Remove(client);
        }
    }
}

/// <summary>Room held by one session; disposing it (any number of times) gives the room back.</summary>
public sealed class CacheLease : IDisposable
{
    CacheBudget? _budget;
    readonly string _client;

    internal CacheLease(CacheBudget budget, string client, long slots)
    {
        _budget = budget;
        _client = client;
        Slots = slots;
    }

    /// <summary>Block-token slots held.</summary>
    public long Slots { get; }

    public void Dispose() => Interlocked.Exchange(ref _budget, null)?.Release(_client, Slots);
}
