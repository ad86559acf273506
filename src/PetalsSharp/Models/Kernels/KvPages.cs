namespace PetalsSharp.Models.Kernels;

/// <summary>
/// One block's KV cache as the fused kernels address it: token <c>pos</c> of batch row <c>row</c> lives in page
/// <c>pos / PageTokens</c> of that row, at slot <c>pos % PageTokens</c>, as <c>[kvH, D]</c> float32. The page
/// lookup is the identity on <see cref="LayerCache"/>'s token-major storage; a paged cache shared across sessions
/// swaps in a page table here and nothing else changes.
/// </summary>
public readonly unsafe struct KvPages(float* keys, float* values, int maxLength, int kvHeads, int headDim)
{
    public int MaxLength { get; } = maxLength;
    public int KvHeads { get; } = kvHeads;
    public int HeadDim { get; } = headDim;

    /// <summary>Floats per token: one page slot.</summary>
    public int TokenStride => KvHeads * HeadDim;

    /// <summary>First float of page <paramref name="page"/> of <paramref name="row"/>, relative to the storage base.</summary>
    long PageOffset(int row, int page) => ((long)row * MaxLength + (long)page * LayerCache.PageTokens) * TokenStride;

    long Offset(int row, int pos, int head) =>
        PageOffset(row, pos / LayerCache.PageTokens) + (long)(pos % LayerCache.PageTokens) * TokenStride + (long)head * HeadDim;

    /// <summary>Key <c>[D]</c> of KV head <paramref name="head"/> at token <paramref name="pos"/> of <paramref name="row"/>.</summary>
    public float* Key(int row, int pos, int head) => keys + Offset(row, pos, head);

    /// <summary>Value <c>[D]</c> of KV head <paramref name="head"/> at token <paramref name="pos"/> of <paramref name="row"/>.</summary>
    public float* Value(int row, int pos, int head) => values + Offset(row, pos, head);
}
