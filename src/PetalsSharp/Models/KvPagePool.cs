using System.Runtime.InteropServices;

namespace PetalsSharp.Models;

/// <summary>
/// Who pays for a session's KV pages. A server charges them to the session's client and refuses (throws) when the
/// cache budget or the client's share has no room; a local run has no account and no limit.
/// </summary>
public interface IKvAccount
{
    /// <summary>Charges <paramref name="pages"/> more pages; throws, charging nothing, when they do not fit.</summary>
    void Take(int pages);

    /// <summary>Gives back <paramref name="pages"/> pages.</summary>
    void Give(int pages);
}

/// <summary>
/// Fixed-size KV pages shared by every session of a block stack: one page holds <see cref="LayerCache.PageTokens"/>
/// tokens of keys then as many of values, <c>[2, PageTokens, kvH, D]</c>, for one row of one block. A session takes
/// pages as its rows grow and gives them back on rollback and close, so memory follows the tokens actually cached,
/// not every session's <c>max_length</c>. Pages are allocated one at a time on first need and then recycled: the
/// memory held is the most pages in use at once, which a server's budget (<see cref="IKvAccount"/>) bounds, until an
/// idle server trims the free ones (<see cref="TrimFree"/>).
/// </summary>
public sealed unsafe class KvPagePool : IDisposable
{
    readonly object _lock = new();
    readonly Stack<nint> _free = new();
    long _inUse, _allocated, _peak;
    bool _disposed;

    /// <param name="tokenElements">Elements of one token of one row: <c>kvH × D</c>.</param>
    /// <param name="dtype">Storage of the pages: float32, bfloat16 or float16.</param>
    public KvPagePool(int tokenElements, TorchSharp.torch.ScalarType dtype = TorchSharp.torch.ScalarType.Float32)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(tokenElements);
        (TokenElements, DType, ElementSize) = (tokenElements, dtype, LayerCache.ElementSize(dtype));
        PageBytes = 2L * LayerCache.PageTokens * tokenElements * ElementSize;
    }

    public TorchSharp.torch.ScalarType DType { get; }

    /// <summary>Elements of one token of one row (<c>kvH × D</c>): a page is twice <see cref="LayerCache.PageTokens"/> of them.</summary>
    public int TokenElements { get; }
    public int ElementSize { get; }
    public long PageBytes { get; }

    /// <summary>Pages held by sessions now.</summary>
    public long PagesInUse { get { lock (_lock) return _inUse; } }

    /// <summary>Bytes this pool holds from the system: the most pages in use at once since the last <see cref="TrimFree"/>.</summary>
    public long AllocatedBytes { get { lock (_lock) return _allocated * PageBytes; } }

    /// <summary>The most bytes this pool has ever held at once (trims aside): what a budget check compares.</summary>
    public long PeakBytes { get { lock (_lock) return _peak * PageBytes; } }

    /// <summary>A cleared page. Pages are recycled across sessions, so one never sees another's keys.</summary>
    public nint Rent()
    {
        nint page;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _inUse++;
            if (!_free.TryPop(out page))
            {
                page = (nint)NativeMemory.AlignedAlloc((nuint)PageBytes, 64);
                _peak = Math.Max(_peak, ++_allocated);
            }
        }
        NativeMemory.Clear((void*)page, (nuint)PageBytes);
        return page;
    }

    public void Return(nint page)
    {
        lock (_lock)
        {
            _inUse--;
            if (_disposed) NativeMemory.AlignedFree((void*)page);
            else _free.Push(page);
        }
    }

    /// <summary>Frees the pages no session holds, so an idle server does not keep its busiest moment's cache.</summary>
    public void TrimFree()
    {
        lock (_lock)
            while (_free.TryPop(out var page))
            {
                NativeMemory.AlignedFree((void*)page);
                _allocated--;
            }
    }

    /// <summary>Frees the idle pages; pages still held by sessions are freed as they come back.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            _disposed = true;
            while (_free.TryPop(out var page)) NativeMemory.AlignedFree((void*)page);
        }
    }
}
