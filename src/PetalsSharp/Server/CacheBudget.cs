using Grpc.Core;

namespace PetalsSharp.Server;

/// <summary>
/// The KV-cache budget of a span, counted in block-token slots: a session of batch B and max_length M over k
/// blocks holds B·M·k slots. Counting per block (not per span) lets a session over part of the span cost less.
/// Allocation never waits: like Petals with its default alloc_timeout of 0, a full cache refuses at once.
/// </summary>
public sealed class CacheBudget
{
    readonly object _lock = new();
    readonly int _spanLength;
    long _used;

    /// <param name="cacheTokens">Tokens of one row the whole span can hold.</param>
    /// <param name="spanLength">Blocks in the span.</param>
    public CacheBudget(long cacheTokens, int spanLength)
    {
        if (spanLength <= 0) throw new ArgumentOutOfRangeException(nameof(spanLength));
        ArgumentOutOfRangeException.ThrowIfNegative(cacheTokens);
        _spanLength = spanLength;
        TotalSlots = checked(cacheTokens * spanLength);
    }

    /// <summary>Block-token slots in all.</summary>
    public long TotalSlots { get; }

    /// <summary>Slots held by open sessions.</summary>
    public long UsedSlots { get { lock (_lock) return _used; } }

    /// <summary>Free slots divided by the span length: how many tokens of one row a full-span session could still get.</summary>
    public long CacheTokensLeft { get { lock (_lock) return (TotalSlots - _used) / _spanLength; } }

    /// <summary>Reserves room for a session; throws RESOURCE_EXHAUSTED when it does not fit.</summary>
    public CacheLease Allocate(int batch, int maxLength, int blocks)
    {
        if (batch <= 0 || maxLength <= 0 || blocks <= 0 || blocks > _spanLength)
            throw new ArgumentOutOfRangeException(nameof(batch), "batch, max length and blocks must be positive");
        long slots = (long)batch * maxLength * blocks;
        lock (_lock)
        {
            long free = TotalSlots - _used;
            if (slots > free)
                throw new RpcException(new Status(StatusCode.ResourceExhausted,
                    $"cache full: batch {batch} × max_length {maxLength} × {blocks} blocks needs {slots} slots, {free} of {TotalSlots} are free " +
                    $"(cache_tokens_left {free / _spanLength})"));
            _used += slots;
        }
        return new CacheLease(this, slots);
    }

    internal void Release(long slots)
    {
        lock (_lock) _used -= slots;
    }
}

/// <summary>Room held by one session; disposing it (any number of times) gives the room back.</summary>
public sealed class CacheLease : IDisposable
{
    CacheBudget? _budget;

    internal CacheLease(CacheBudget budget, long slots)
    {
        _budget = budget;
        Slots = slots;
    }

    /// <summary>Block-token slots held.</summary>
    public long Slots { get; }

    public void Dispose() => Interlocked.Exchange(ref _budget, null)?.Release(Slots);
}
