namespace PetalsSharp.Models.Kernels;

/// <summary>How a KV page stores its elements.</summary>
public enum KvKind : byte { Float32, BFloat16, Float16 }

/// <summary>
/// One block's KV cache as the fused kernels address it: token <c>pos</c> of batch row <c>row</c> lives in page
/// <c>pos / PageTokens</c> of that row, at slot <c>pos % PageTokens</c>, as <c>[kvH, D]</c> elements of
/// <see cref="Kind"/>. The page tables are <c>[rows, pagesPerRow]</c> pointers (<see cref="LayerCache"/> fills them
/// from its <see cref="KvPagePool"/>); a page a row has not reached yet is null and never read. Kernels write and read
/// through <see cref="WriteKey"/>, <see cref="DotKeys"/> and friends, which convert 16-bit storage to and from float32
/// (round to nearest even, as the reference path's <c>to(dtype)</c>), so compute is float32 whatever the storage.
/// </summary>
public readonly unsafe struct KvPages(nint* keyPages, nint* valuePages, int pagesPerRow, int maxLength, int kvHeads, int headDim,
    KvKind kind = KvKind.Float32)
{
    public int MaxLength { get; } = maxLength;
    public int KvHeads { get; } = kvHeads;
    public int HeadDim { get; } = headDim;
    public KvKind Kind { get; } = kind;

    /// <summary>Elements per token: one page slot.</summary>
    public int TokenStride => KvHeads * HeadDim;

    int ElementSize => Kind == KvKind.Float32 ? 4 : 2;

    byte* At(nint* table, int row, int pos, int head) => (byte*)table[(long)row * pagesPerRow + pos / LayerCache.PageTokens]
        + ((long)(pos % LayerCache.PageTokens) * TokenStride + (long)head * HeadDim) * ElementSize;

    /// <summary>Key <c>[D]</c> of KV head <paramref name="head"/> at token <paramref name="pos"/> of <paramref name="row"/>, in place (float32 storage only).</summary>
    public float* Key(int row, int pos, int head) => Kind == KvKind.Float32 ? (float*)At(keyPages, row, pos, head)
        : throw new InvalidOperationException("a 16-bit cache has no float32 keys to point at; use DotKeys");

    /// <summary>Value <c>[D]</c> at token <paramref name="pos"/>, in place (float32 storage only).</summary>
    public float* Value(int row, int pos, int head) => Kind == KvKind.Float32 ? (float*)At(valuePages, row, pos, head)
        : throw new InvalidOperationException("a 16-bit cache has no float32 values to point at; use AddValues");

    /// <summary>Stores <paramref name="key"/> <c>[D]</c> at token <paramref name="pos"/> of <paramref name="row"/>.</summary>
    public void WriteKey(int row, int pos, int head, float* key) => KvConvert.Store(key, At(keyPages, row, pos, head), HeadDim, Kind);

    /// <summary>Stores <paramref name="value"/> <c>[D]</c> at token <paramref name="pos"/> of <paramref name="row"/>.</summary>
    public void WriteValue(int row, int pos, int head, float* value) => KvConvert.Store(value, At(valuePages, row, pos, head), HeadDim, Kind);

    /// <summary>
    /// <c>scores[h·stride + j - lo] = scale · q_h · key(j)</c> for the <paramref name="count"/> query heads
    /// <c>q [count, D]</c> and tokens <paramref name="lo"/>..<paramref name="hi"/> of <paramref name="row"/>: one page
    /// lookup per page, each key read once for all the heads, and an inlined head-sized dot (a general-purpose dot call
    /// per key cost more than its arithmetic at head size 64).
    /// </summary>
    public void DotKeys(float* q, int count, int row, int head, int lo, int hi, float scale, float* scores, int stride)
    {
        long step = (long)TokenStride * ElementSize;
        for (int j = lo; j <= hi;)
        {
            int end = Math.Min(hi + 1, (j / LayerCache.PageTokens + 1) * LayerCache.PageTokens);
            // Pages are separate allocations the hardware prefetcher cannot guess: fetch the next page's key of this
            // slot while this one is scored, so its first keys are not cache misses.
            byte* next = end <= hi ? At(keyPages, row, end, head) : null;   // end is a page boundary here
            for (byte* k = At(keyPages, row, j, head); j < end; j++, k += step)
            {
                if (next is not null) Prefetch(next + (long)(j % LayerCache.PageTokens) * step, HeadDim * ElementSize);
                for (int h = 0; h < count; h++)
                    scores[(long)h * stride + j - lo] = KvConvert.Dot(q + (long)h * HeadDim, k, HeadDim, Kind) * scale;
            }
        }
    }

    /// <summary>
    /// <c>acc_h += Σ p[h·stride + j - lo] · value(j)</c> over tokens <paramref name="lo"/>..<paramref name="hi"/> for
    /// the <paramref name="count"/> heads whose outputs are <c>acc [count, D]</c>, a page at a time so that its values
    /// stay in L1 across the heads; weights of exactly zero (masked tokens, whose slots may hold anything) are skipped.
    /// </summary>
    public void AddValues(float* p, int count, int stride, int row, int head, int lo, int hi, float* acc)
    {
        long step = (long)TokenStride * ElementSize;
        for (int j = lo; j <= hi;)
        {
            int end = Math.Min(hi + 1, (j / LayerCache.PageTokens + 1) * LayerCache.PageTokens);
            byte* v = At(valuePages, row, j, head);
            if (end <= hi)   // as in DotKeys: the next page's values of this head while this page's are summed
            {
                byte* next = At(valuePages, row, end, head);
                for (int t = 0; t < Math.Min(LayerCache.PageTokens, hi + 1 - end); t++) Prefetch(next + t * step, HeadDim * ElementSize);
            }
            for (int h = 0; h < count; h++)
                KvConvert.MultiplyAddRun(v, step, p + (long)h * stride + (j - lo), end - j, acc + (long)h * HeadDim, HeadDim, Kind);
            j = end;
        }
    }

    /// <summary>Asks for the <paramref name="bytes"/> at <paramref name="p"/> in cache, a 64-byte line at a time (a no-op off x86).</summary>
    static void Prefetch(byte* p, int bytes)
    {
        if (!System.Runtime.Intrinsics.X86.Sse.IsSupported) return;
        for (int b = 0; b < bytes; b += 64) System.Runtime.Intrinsics.X86.Sse.Prefetch0(p + b);
    }

    /// <summary>
    /// Page tables over token-major <c>[rows, maxLength, kvH, D]</c> storage (tests and tools that hold plain
    /// tensors). The tables are pinned arrays; keep them alive as long as the pages are read.
    /// </summary>
    public static KvPages OverContiguous(float* keys, float* values, int rows, int maxLength, int kvHeads, int headDim,
        out nint[] keyTable, out nint[] valueTable)
    {
        int perRow = (maxLength + LayerCache.PageTokens - 1) / LayerCache.PageTokens;
        keyTable = GC.AllocateArray<nint>(rows * perRow, pinned: true);
        valueTable = GC.AllocateArray<nint>(rows * perRow, pinned: true);
        long stride = (long)kvHeads * headDim;
        for (int r = 0; r < rows; r++)
            for (int p = 0; p < perRow; p++)
            {
                long offset = ((long)r * maxLength + (long)p * LayerCache.PageTokens) * stride;
                keyTable[r * perRow + p] = (nint)(keys + offset);
                valueTable[r * perRow + p] = (nint)(values + offset);
            }
        fixed (nint* k = keyTable, v = valueTable)   // pinned arrays: the addresses outlive this block
            return new KvPages(k, v, perRow, maxLength, kvHeads, headDim);
    }
}
