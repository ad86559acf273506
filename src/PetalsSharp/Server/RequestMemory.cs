using Grpc.Core;

namespace PetalsSharp.Server;

/// <summary>
/// Bytes that Forward/Backward requests may hold while they are received and served, summed over all calls. Each
/// call takes a <see cref="Lease"/> that grows with the bytes it actually received and gives them back when the
/// call ends, so many concurrent (or stalled) calls cannot add up to more memory than the server agreed to give.
/// Like the cache budget it never waits: a call that would pass the limit fails with RESOURCE_EXHAUSTED, and the
/// client retries elsewhere.
/// </summary>
public sealed class RequestMemory(long limitBytes)
{
    readonly Lock _lock = new();
    long _used;

    public long LimitBytes { get; } = limitBytes > 0 ? limitBytes : throw new ArgumentOutOfRangeException(nameof(limitBytes));

    public long UsedBytes
    {
        get { lock (_lock) return _used; }
    }

    public Lease Open() => new(this);

    void Take(long bytes)
    {
        lock (_lock)
        {
            if (_used + bytes > LimitBytes)
                throw CacheBudget.Busy(bytes > LimitBytes ? null : CacheBudget.RetryAfter,
                    $"the server is receiving {Mb(_used)} MB of requests; {Mb(bytes)} MB more would pass its limit of {Mb(LimitBytes)} MB; retry later or elsewhere");
            _used += bytes;
        }
    }

    void Give(long bytes)
    {
        lock (_lock) _used -= bytes;
    }

    static string Mb(long bytes) => (bytes / 1048576.0).ToString("0.##", System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>One call's share; dispose it when the call ends.</summary>
    public sealed class Lease(RequestMemory owner) : IDisposable
    {
        long _held;

        /// <summary>Reserves <paramref name="bytes"/> more, or throws RESOURCE_EXHAUSTED.</summary>
        public void Reserve(long bytes)
        {
            if (bytes <= 0) return;
            owner.Take(bytes);
            Interlocked.Add(ref _held, bytes);
        }

        public void Dispose() => owner.Give(Interlocked.Exchange(ref _held, 0));
    }
}
