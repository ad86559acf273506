namespace PetalsSharp.Models.Kernels;

/// <summary>
/// One block's KV cache as the fused kernels address it: token <c>pos</c> of batch row <c>row</c> lives in page
/// <c>pos / PageTokens</c> of that row, at slot <c>pos % PageTokens</c>, as <c>[kvH, D]</c> float32. The page tables
/// are <c>[rows, pagesPerRow]</c> pointers (<see cref="LayerCache"/> fills them from its <see cref="KvPagePool"/>);
/// a page a row has not reached yet is null and never read.
/// </summary>
public readonly unsafe struct KvPages(nint* keyPages, nint* valuePages, int pagesPerRow, int maxLength, int kvHeads, int headDim)
{
    public int MaxLength { get; } = maxLength;
    public int KvHeads { get; } = kvHeads;
    public int HeadDim { get; } = headDim;

    /// <summary>Floats per token: one page slot.</summary>
    public int TokenStride => KvHeads * HeadDim;

    long Slot(int pos, int head) => (long)(pos % LayerCache.PageTokens) * TokenStride + (long)head * HeadDim;

    /// <summary>Key <c>[D]</c> of KV head <paramref name="head"/> at token <paramref name="pos"/> of <paramref name="row"/>.</summary>
    public float* Key(int row, int pos, int head) =>
        (float*)keyPages[(long)row * pagesPerRow + pos / LayerCache.PageTokens] + Slot(pos, head);

    /// <summary>Value <c>[D]</c> of KV head <paramref name="head"/> at token <paramref name="pos"/> of <paramref name="row"/>.</summary>
    public float* Value(int row, int pos, int head) =>
        (float*)valuePages[(long)row * pagesPerRow + pos / LayerCache.PageTokens] + Slot(pos, head);

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
