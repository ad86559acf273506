using Grpc.Core;
using PetalsSharp.Models;

namespace PetalsSharp.Server;

/// <summary>
/// The KV-cache budget of a span, counted in block-token slots (a KV page, <see cref="LayerCache.PageTokens"/> tokens
/// of one row of one block, is <see cref="LayerCache.PageTokens"/> slots). Two things are counted:
/// <list type="bullet">
/// <item><b>Promised</b> room decides admission: a session is promised the pages its <c>max_length</c> may need when it
/// opens, and is refused (busy) when the promises would pass <see cref="TotalSlots"/> × overcommit. With the default
/// overcommit of 1, a session that was admitted always gets its pages, so no step fails for room half-way through a
/// generation (a client would have to replay its history elsewhere).</item>
/// <item><b>Held</b> pages are memory: a session takes them as its rows grow (<see cref="CacheLease.Take"/>) and gives
/// them back on rollback and close, so the pool holds what sessions have cached, not their promises. Held slots never
/// pass <see cref="TotalSlots"/>: with overcommit above 1 a step that finds no page free is refused (busy).</item>
/// </list>
/// Counting per block (not per span) lets a session over part of the span cost less. Nothing ever waits for room:
/// like Petals with its default alloc_timeout of 0, a full cache refuses at once. One client (see
/// <see cref="ClientKey"/>) may be promised at most a share of the room, so that a single caller cannot lock everyone
/// else out for as long as it keeps its sessions open.
/// </summary>
public sealed class CacheBudget
{
    readonly object _lock = new();
    readonly int _spanLength;
    readonly double _maxClientShare;
    readonly Dictionary<string, long> _promisedTo = [];   // only clients with open sessions
    long _promised, _held;

    /// <param name="cacheTokens">Tokens of one row the whole span can hold.</param>
    /// <param name="spanLength">Blocks in the span.</param>
    /// <param name="maxClientShare">Fraction of the room one client may be promised, in (0, 1].</param>
    /// <param name="overcommit">Promises may reach this multiple of the room (≥ 1): more sessions admitted, at the risk
    /// of a busy step when they all grow.</param>
    public CacheBudget(long cacheTokens, int spanLength, double maxClientShare = 1, double overcommit = 1)
    {
        if (spanLength <= 0) throw new ArgumentOutOfRangeException(nameof(spanLength));
        ArgumentOutOfRangeException.ThrowIfNegative(cacheTokens);
        if (!(maxClientShare > 0 && maxClientShare <= 1)) throw new ArgumentOutOfRangeException(nameof(maxClientShare), "must be in (0, 1]");
        if (!(overcommit >= 1 && overcommit <= 100)) throw new ArgumentOutOfRangeException(nameof(overcommit), "must be in [1, 100]");
        _spanLength = spanLength;
        _maxClientShare = maxClientShare;
        TotalSlots = checked(cacheTokens * spanLength);
        MaxClientSlots = (long)Math.Floor(TotalSlots * maxClientShare);
        PromisableSlots = (long)Math.Floor(TotalSlots * overcommit);
        MaxClientPromise = (long)Math.Floor(PromisableSlots * maxClientShare);
    }

    /// <summary>Block-token slots of memory in all: held pages never pass it.</summary>
    public long TotalSlots { get; }

    /// <summary>KV pages the budget pays for in all: the most a span's page pool ever holds for sessions.</summary>
    public long TotalPages => TotalSlots / LayerCache.PageTokens;

    /// <summary>Slots sessions may be promised together: <see cref="TotalSlots"/> × overcommit.</summary>
    public long PromisableSlots { get; }

    /// <summary>Block-token slots one client may hold in pages at once.</summary>
    public long MaxClientSlots { get; }

    /// <summary>Block-token slots one client may be promised at once.</summary>
    public long MaxClientPromise { get; }

    /// <summary>Slots promised to open sessions.</summary>
    public long PromisedSlots { get { lock (_lock) return _promised; } }

    /// <summary>Slots of the pages sessions hold now: the cache's memory.</summary>
    public long HeldSlots { get { lock (_lock) return _held; } }

    /// <summary>Unpromised slots divided by the span length: how many tokens of one row a new full-span session could ask for.</summary>
    public long CacheTokensLeft { get { lock (_lock) return Math.Max(0, PromisableSlots - _promised) / _spanLength; } }

    /// <summary>Slots promised to the sessions of <paramref name="client"/>.</summary>
    public long PromisedTo(string client) { lock (_lock) return _promisedTo.GetValueOrDefault(client); }

    /// <summary>Slots a session of <paramref name="batch"/> rows over <paramref name="blocks"/> blocks holds at <paramref name="tokens"/> tokens: whole pages.</summary>
    public static long SlotsFor(int batch, int tokens, int blocks) =>
        (long)batch * blocks * ((tokens + LayerCache.PageTokens - 1) / LayerCache.PageTokens) * LayerCache.PageTokens;

    /// <summary>
    /// Admits a session of <paramref name="client"/> that may grow to <paramref name="maxLength"/> tokens, promising it
    /// the pages it may need; it holds no memory until its steps take pages. Throws RESOURCE_EXHAUSTED without a retry
    /// hint when the session could never fit (the whole room or the client's share is too small for its max_length),
    /// and with one when the room is promised to others now.
    /// </summary>
    public CacheLease Open(int batch, int maxLength, int blocks, string client = ClientKey.Unknown)
    {
        if (batch <= 0 || maxLength <= 0 || blocks <= 0 || blocks > _spanLength)
            throw new ArgumentOutOfRangeException(nameof(batch), "batch, max length and blocks must be positive");
        long slots = SlotsFor(batch, maxLength, blocks);
        string what = $"batch {batch} × max_length {maxLength} × {blocks} blocks needs {slots} slots";
        lock (_lock)
        {
            long promised = _promisedTo.GetValueOrDefault(client);
            // The share first: a request past it is refused even on an empty server, and the client should hear why.
            if (MaxClientPromise < PromisableSlots && promised + slots > MaxClientPromise)
                throw Busy(slots > MaxClientPromise ? null : RetryAfter,
                    $"cache share exceeded: {what} and client {client} already holds {promised}; one client may hold at most " +
                    $"{MaxClientPromise} of {PromisableSlots} slots ({ShareText}); close sessions or use a smaller batch or max_length");
            long free = PromisableSlots - _promised;
            if (slots > free)
                throw Busy(slots > PromisableSlots ? null : RetryAfter,
                    $"cache full: {what}, {free} of {PromisableSlots} are free (cache_tokens_left {free / _spanLength})");
            _promised += slots;
            _promisedTo[client] = promised + slots;
        }
        return new CacheLease(this, client, slots);
    }

    string ShareText => $"max_cache_share {_maxClientShare.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture)}";

    /// <summary>Pages for a growing session: within its promise, and within the memory (only overcommit can run out).</summary>
    internal void Take(long slots, long heldBySession, long promise)
    {
        if (heldBySession + slots > promise)
            throw new InvalidOperationException($"a session promised {promise} slots asked for {heldBySession + slots}");
        lock (_lock)
        {
            long free = TotalSlots - _held;
            if (slots > free)
                throw Busy(RetryAfter, $"cache full: the next step needs {slots} more slots of pages, {free} of {TotalSlots} are free " +
                    "(this server promises more room than it holds: --cache-overcommit)");
            _held += slots;
        }
    }

    internal void Give(long slots) { lock (_lock) _held -= slots; }

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

    internal void Close(string client, long promise, long held)
    {
        lock (_lock)
        {
            _promised -= promise;
            _held -= held;
            long left = _promisedTo.GetValueOrDefault(client) - promise;
            if (left > 0) _promisedTo[client] = left;
            else _promisedTo.Remove(client);
        }
    }
}

/// <summary>
/// What one session is promised and holds: the account its KV pages are charged to. Disposing it (any number of
/// times) gives back the promise and whatever pages are still counted; later calls charge nothing.
/// </summary>
public sealed class CacheLease : IKvAccount, IDisposable
{
    readonly object _lock = new();
    CacheBudget? _budget;
    readonly string _client;
    long _held;

    internal CacheLease(CacheBudget budget, string client, long promise) => (_budget, _client, Promise) = (budget, client, promise);

    /// <summary>Block-token slots promised at open: the most this session may hold.</summary>
    public long Promise { get; }

    /// <summary>Block-token slots of the pages held now.</summary>
    public long Slots { get { lock (_lock) return _held; } }

    /// <summary>Charges <paramref name="pages"/> more pages; throws RESOURCE_EXHAUSTED (with a retry hint) when no memory is free.</summary>
    public void Take(int pages)
    {
        long slots = (long)pages * LayerCache.PageTokens;
        lock (_lock)
        {
            var budget = _budget ?? throw new ObjectDisposedException(nameof(CacheLease));
            budget.Take(slots, _held, Promise);
            _held += slots;
        }
    }

    public void Give(int pages)
    {
        lock (_lock)
        {
            if (_budget is not { } budget) return;
            long slots = Math.Min((long)pages * LayerCache.PageTokens, _held);
            _held -= slots;
            budget.Give(slots);
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _budget?.Close(_client, Promise, _held);
            (_budget, _held) = (null, 0);
        }
    }
}
