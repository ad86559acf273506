using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using PetalsSharp.Models.Kernels;
using static TorchSharp.torch;

namespace PetalsSharp.Models;

/// <summary>
/// Keys and values of one block for one session, in pages of <see cref="PageTokens"/> tokens taken from a
/// <see cref="KvPagePool"/> as the rows grow (<see cref="EnsureLength"/>), never the whole <c>max_length</c> up front,
/// and given back on rollback (<see cref="Truncate"/>) and dispose. Keys are stored after rotary (rotary families), so
/// a cached step never recomputes them.
/// <para>
/// Each row has its own page table, <c>[B, pagesPerRow]</c>; a page is <c>[PageTokens, kvH, D]</c> of keys followed by
/// as many values. The fused kernels read pages in place through <see cref="Pages"/>; the reference TorchSharp path
/// writes through <see cref="Append"/> and reads a gathered copy, so a session may prefill on one path and decode on
/// the other. Pages live in CPU memory whatever device the blocks are on.
/// </para>
/// </summary>
public sealed unsafe class LayerCache : IDisposable
{
    /// <summary>Tokens per page.</summary>
    public const int PageTokens = 16;

    readonly KvPagePool _pool;
    readonly bool _ownsPool;
    readonly IKvAccount? _account;
    readonly nint[] _keyTable, _valueTable;   // [B, pagesPerRow] pinned: the fused kernels hold their addresses
    readonly int _pagesPerRow;
    readonly KvKind _kind;
    int _held;                                // page index bound of every row: rows of a session advance together
    int _dropped;                             // leading pages given back: a sliding window never reads them again

    /// <summary>A cache drawing on <paramref name="pool"/> and charging <paramref name="account"/> (null: no limit).</summary>
    public LayerCache(int batch, int maxLength, int kvHeads, int headDim, ScalarType dtype, KvPagePool pool, IKvAccount? account = null)
        : this(batch, maxLength, kvHeads, headDim, dtype, pool, account, ownsPool: false)
    {
    }

    /// <summary>A cache with a pool of its own (tests and one-off tools).</summary>
    public LayerCache(int batch, int maxLength, int kvHeads, int headDim, ScalarType dtype = ScalarType.Float32)
        : this(batch, maxLength, kvHeads, headDim, dtype, new KvPagePool(kvHeads * headDim, dtype), null, ownsPool: true)
    {
    }

    LayerCache(int batch, int maxLength, int kvHeads, int headDim, ScalarType dtype, KvPagePool pool, IKvAccount? account, bool ownsPool)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batch);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxLength);
        if (pool.TokenElements != kvHeads * headDim || pool.DType != dtype)
            throw new ArgumentException($"pool pages hold {pool.TokenElements} {pool.DType} elements per token; this cache needs {kvHeads * headDim} {dtype}");
        (Batch, MaxLength, KvHeads, HeadDim, DType) = (batch, maxLength, kvHeads, headDim, dtype);
        (_pool, _account, _ownsPool) = (pool, account, ownsPool);
        _pagesPerRow = (maxLength + PageTokens - 1) / PageTokens;
        _kind = dtype switch { ScalarType.BFloat16 => KvKind.BFloat16, ScalarType.Float16 => KvKind.Float16, _ => KvKind.Float32 };
        _keyTable = GC.AllocateArray<nint>(batch * _pagesPerRow, pinned: true);
        _valueTable = GC.AllocateArray<nint>(batch * _pagesPerRow, pinned: true);
    }

    public int MaxLength { get; }
    public int Batch { get; }
    public int KvHeads { get; }
    public int HeadDim { get; }
    public ScalarType DType { get; }

    /// <summary>Tokens each row has room for now: its pages times <see cref="PageTokens"/>.</summary>
    public int Room => Math.Min(MaxLength, _held * PageTokens);

    /// <summary>Bytes this cache holds: its pages.</summary>
    public long Bytes => (long)PagesHeld * _pool.PageBytes;

    /// <summary>Pages this cache holds, over all rows.</summary>
    public int PagesHeld => (_held - _dropped) * Batch;

    /// <summary>First token still held: tokens before it went with <see cref="DropBefore"/>.</summary>
    public int FirstKept => _dropped * PageTokens;

    long TokenBytes => (long)KvHeads * HeadDim * _pool.ElementSize;

    /// <summary>
    /// Makes room for tokens <c>[0, length)</c> in every row, taking pages as needed. Throws what the account throws
    /// when the pages do not fit, holding nothing more than before.
    /// </summary>
    public void EnsureLength(int length)
    {
        if (length > MaxLength)
            throw new InvalidOperationException($"KV cache overflow: {length} tokens > max length {MaxLength}");
        int need = (length + PageTokens - 1) / PageTokens;
        if (need <= _held) return;
        _account?.Take((need - _held) * Batch);
        for (int p = _held; p < need; p++)
            for (int r = 0; r < Batch; r++)
            {
                nint page = _pool.Rent();
                _keyTable[r * _pagesPerRow + p] = page;
                _valueTable[r * _pagesPerRow + p] = page + (nint)(PageTokens * TokenBytes);
            }
        _held = need;
    }

    /// <summary>Gives back the pages past token <paramref name="length"/> (a rollback): what is kept is never rewritten.</summary>
    public void Truncate(int length)
    {
        int keep = (Math.Max(0, length) + PageTokens - 1) / PageTokens;
        if (keep >= _held) return;
        Release(Math.Max(keep, _dropped), _held);
        _held = keep;
        _dropped = Math.Min(_dropped, keep);
    }

    /// <summary>
    /// Gives back the whole pages before token <paramref name="token"/>: a sliding window's queries never look that
    /// far back again. Reads of those tokens see zeros (the reference path masks them).
    /// </summary>
    public void DropBefore(int token)
    {
        int drop = Math.Min(Math.Max(0, token) / PageTokens, _held);
        if (drop <= _dropped) return;
        Release(_dropped, drop);
        _dropped = drop;
    }

    void Release(int from, int to)
    {
        for (int p = from; p < to; p++)
            for (int r = 0; r < Batch; r++)
            {
                _pool.Return(_keyTable[r * _pagesPerRow + p]);
                _keyTable[r * _pagesPerRow + p] = _valueTable[r * _pagesPerRow + p] = 0;
            }
        if (to > from) _account?.Give((to - from) * Batch);
    }

    /// <summary>
    /// Writes k/v <c>[B, kvH, T, D]</c> for the new tokens at <c>[past, past+T)</c> and returns copies of
    /// <c>[0, past+T)</c> as <c>[B, kvH, S, D]</c> in k's dtype and device (the reference path's view of the cache).
    /// </summary>
    public (Tensor Keys, Tensor Values) Append(Tensor k, Tensor v, int past)
    {
        var t = (int)k.shape[2];
        if (past + t > MaxLength)
            throw new InvalidOperationException($"KV cache overflow: {past} cached + {t} new > max length {MaxLength}");
        EnsureLength(past + t);
        Write(_keyTable, k, past);
        Write(_valueTable, v, past);
        return (Gather(_keyTable, past + t, k.dtype, k.device), Gather(_valueTable, past + t, v.dtype, v.device));
    }

    /// <summary>Keys and values of tokens <c>[0, length)</c> as <c>[B, kvH, length, D]</c> float32 copies (tests, HF comparisons).</summary>
    public (Tensor Keys, Tensor Values) Read(int length)
    {
        if (length > Room) throw new ArgumentOutOfRangeException(nameof(length), $"only {Room} tokens have pages");
        return (Gather(_keyTable, length, ScalarType.Float32, CPU), Gather(_valueTable, length, ScalarType.Float32, CPU));
    }

    void Write(nint[] table, Tensor x, int past)
    {
        using var rows = x.permute(0, 2, 1, 3).to(DType, CPU).contiguous();   // [B, T, kvH, D]
        int t = (int)rows.shape[1];
        byte* src = Weights.NativeMemory.Pointer<byte>(rows);
        for (int b = 0; b < Batch; b++)
            for (int i = 0; i < t;)
            {
                int pos = past + i, run = Math.Min(t - i, PageTokens - pos % PageTokens);
                byte* dst = (byte*)table[b * _pagesPerRow + pos / PageTokens] + pos % PageTokens * TokenBytes;
                Buffer.MemoryCopy(src + ((long)b * t + i) * TokenBytes, dst, run * TokenBytes, run * TokenBytes);
                i += run;
            }
    }

    Tensor Gather(nint[] table, int length, ScalarType dtype, Device device)
    {
        var rows = empty([Batch, length, KvHeads, HeadDim], DType, CPU);      // [B, S, kvH, D]
        byte* dst = Weights.NativeMemory.Pointer<byte>(rows);
        for (int b = 0; b < Batch; b++)
            for (int pos = 0; pos < length; pos += PageTokens)
            {
                int run = Math.Min(PageTokens, length - pos);
                byte* page = (byte*)table[b * _pagesPerRow + pos / PageTokens], to = dst + ((long)b * length + pos) * TokenBytes;
                if (page == null) new Span<byte>(to, (int)(run * TokenBytes)).Clear();   // dropped behind a sliding window
                else Buffer.MemoryCopy(page, to, run * TokenBytes, run * TokenBytes);
            }
        var heads = rows.permute(0, 2, 1, 3);                                 // [B, kvH, S, D]
        return DType == dtype && device.type == TorchSharp.DeviceType.CPU ? heads : heads.to(dtype, device);
    }

    /// <summary>
    /// Reorders rows for beam search: row i becomes old row <paramref name="hypoIds"/>[i]. Page contents move; each
    /// row keeps its own pages, so no page is ever shared and a rollback stays per row.
    /// </summary>
    public void Reorder(Tensor hypoIds)
    {
        using var ids = hypoIds.to(ScalarType.Int64, CPU).contiguous();
        var order = ids.data<long>().ToArray();
        if (order.Length != Batch || order.Any(i => i < 0 || i >= Batch))
            throw new ArgumentException($"hypo_ids must be {Batch} row indices in [0, {Batch})");
        long pageBytes = _pool.PageBytes;
        var scratch = new byte[Batch * pageBytes];
        fixed (byte* old = scratch)
            for (int p = _dropped; p < _held; p++)
            {
                // Keys and values share one page, so one copy moves both.
                for (int r = 0; r < Batch; r++)
                    Buffer.MemoryCopy((byte*)_keyTable[r * _pagesPerRow + p], old + r * pageBytes, pageBytes, pageBytes);
                for (int r = 0; r < Batch; r++)
                    Buffer.MemoryCopy(old + order[r] * pageBytes, (byte*)_keyTable[r * _pagesPerRow + p], pageBytes, pageBytes);
            }
    }

    /// <summary>Page tables for the fused kernels, valid while the cache lives.</summary>
    public KvPages Pages()
    {
        var keys = (nint*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_keyTable));
        var values = (nint*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_valueTable));
        return new KvPages(keys, values, _pagesPerRow, MaxLength, KvHeads, HeadDim, _kind);
    }

    internal static int ElementSize(ScalarType t) => t switch
    {
        ScalarType.Float32 => 4,
        ScalarType.BFloat16 or ScalarType.Float16 => 2,
        _ => throw new ArgumentException($"unsupported cache dtype {t}"),
    };

    public void Dispose()
    {
        Truncate(0);
        if (_ownsPool) _pool.Dispose();
    }
}
