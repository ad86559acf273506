using Grpc.Core;
using PetalsSharp.Models;

namespace PetalsSharp.Server;

/// <summary>
/// The KV-cache budget of a span, counted in block-token slots: a KV page (<see cref="LayerCache.PageTokens"/> tokens
/// of one row of one block) costs <see cref="LayerCache.PageTokens"/> slots. Sessions pay as they grow: opening takes
/// nothing, each step charges the pages its rows newly reach (<see cref="CacheLease.Take"/>), and a rollback or close
/// gives them back, so the slots held are the pages actually in memory. Counting per block (not per span) lets a
/// session over part of the span cost less.
/// Nothing ever waits for room: like Petals with its default alloc_timeout of 0, a full cache refuses at once.
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

    /// <summary>KV pages the budget pays for in all: the most a span's page pool ever holds for sessions.</summary>
    public long TotalPages => TotalSlots / LayerCache.PageTokens;

    /// <summary>Block-token slots one client may hold at once.</summary>
    public long MaxClientSlots { get; }

    /// <summary>Slots held by open sessions.</summary>
    public long UsedSlots { get { lock (_lock) return _used; } }

    /// <summary>Free slots divided by the span length: how many tokens of one row a full-span session could still get.</summary>
    public long CacheTokensLeft { get { lock (_lock) return (TotalSlots - _used) / _spanLength; } }

    /// <summary>Slots the sessions of <paramref name="client"/> hold.</summary>
    public long HeldBy(string client) { lock (_lock) return _byClient.GetValueOrDefault(client); }

    /// <summary>Slots a session of <paramref name="batch"/> rows over <paramref name="blocks"/> blocks holds at <paramref name="tokens"/> tokens: whole pages.</summary>
    public static long SlotsFor(int batch, int tokens, int blocks) =>
        (long)batch * blocks * ((tokens + LayerCache.PageTokens - 1) / LayerCache.PageTokens) * LayerCache.PageTokens;

    /// <summary>
    /// Admits a session of <paramref name="client"/> that may grow to <paramref name="maxLength"/> tokens; it holds
    /// nothing until its steps take pages. Throws RESOURCE_EXHAUSTED without a retry hint when the session could never
    /// fit (the whole cache or the client's share is too small for its max_length), and with one when there is not
    /// room now for its first page of every row and block.
    /// </summary>
    public CacheLease Open(int batch, int maxLength, int blocks, string client = ClientKey.Unknown)
    {
        if (batch <= 0 || maxLength <= 0 || blocks <= 0 || blocks > _spanLength)
            throw new ArgumentOutOfRangeException(nameof(batch), "batch, max length and blocks must be positive");
        long most = SlotsFor(batch, maxLength, blocks), first = SlotsFor(batch, 1, blocks);
        string what = $"batch {batch} × max_length {maxLength} × {blocks} blocks";
        if (MaxClientSlots < TotalSlots && most > MaxClientSlots)
            throw Busy(null, $"cache share exceeded: {what} may need {most} slots; one client ({client}) may hold at most {MaxClientSlots} of {TotalSlots} slots " +
                $"({ShareText}); use a smaller batch or max_length");
        if (most > TotalSlots)
            throw Busy(null, $"cache full: {what} may need {most} slots and this server has {TotalSlots} in all; use a smaller batch or max_length");
        lock (_lock) Check(client, first, $"{what} needs {first} slots for its first tokens");
        return new CacheLease(this, client);
    }

    /// <summary>Refuses (busy, with a hint) when <paramref name="slots"/> more do not fit; caller holds the lock.</summary>
    void Check(string client, long slots, string need)
    {
        long held = _byClient.GetValueOrDefault(client);
        // The share first: without a cap (share 1) "cache full" is the whole truth.
        if (MaxClientSlots < TotalSlots && held + slots > MaxClientSlots)
            throw Busy(RetryAfter, $"cache share exceeded: {need} and client {client} already holds {held}; one client may hold at most " +
                $"{MaxClientSlots} of {TotalSlots} slots ({ShareText}); close sessions or use a smaller batch or max_length");
        long free = TotalSlots - _used;
        if (slots > free)
            throw Busy(RetryAfter, $"cache full: {need}, {free} of {TotalSlots} are free (cache_tokens_left {free / _spanLength})");
    }

    string ShareText => $"max_cache_share {_maxClientShare.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture)}";

    internal void Take(string client, long slots)
    {
        lock (_lock)
        {
            Check(client, slots, $"the next step needs {slots} more slots");
            _used += slots;
            _byClient[client] = _byClient.GetValueOrDefault(client) + slots;
        }
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

/// <summary>
/// What one session holds: the account its KV pages are charged to. Disposing it (any number of times) gives back
/// whatever the session still holds; later calls charge nothing.
/// </summary>
public sealed class CacheLease : IKvAccount, IDisposable
{
    readonly object _lock = new();
    CacheBudget? _budget;
    readonly string _client;
    long _slots;

    internal CacheLease(CacheBudget budget, string client) => (_budget, _client) = (budget, client);

    /// <summary>Block-token slots held now.</summary>
    public long Slots { get { lock (_lock) return _slots; } }

    /// <summary>Charges <paramref name="pages"/> more pages; throws RESOURCE_EXHAUSTED (with a retry hint) when they do not fit.</summary>
    public void Take(int pages)
    {
        long slots = (long)pages * LayerCache.PageTokens;
        lock (_lock)
        {
            var budget = _budget ?? throw new ObjectDisposedException(nameof(CacheLease));
            budget.Take(_client, slots);
            _slots += slots;
        }
    }

    public void Give(int pages)
    {
        lock (_lock)
        {
            if (_budget is not { } budget) return;
            long slots = Math.Min((long)pages * LayerCache.PageTokens, _slots);
            _slots -= slots;
            budget.Release(_client, slots);
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _budget?.Release(_client, _slots);
            (_budget, _slots) = (null, 0);
        }
    }
}
