using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PetalsSharp.Models;

/// <summary>
/// <c>x · wᵀ + b</c> for a weight stored in another dtype than x (bf16 or f16 weights, f32 compute) and more rows
/// than the decode kernels take, as in a prefill. This CPU multiplies 16-bit matrices at about 1 GFLOP/s, so the
/// weight is upcast; upcasting it whole would hold an f32 copy of every matrix in turn (a Llama-3-8B MLP matrix is
/// 235 MB), so one tile of output rows is upcast at a time and its slice of the output computed before the next.
/// </summary>
internal static class TiledLinear
{
    /// <summary>
    /// Upcast bytes per tile: the transient a multi-row step adds, against 235 MB for upcasting an 8B MLP matrix
    /// whole, while each tile keeps enough output rows (a thousand at hidden 4096) for a full-speed GEMM.
    /// </summary>
    internal const long DefaultTileBytes = 16L << 20;

    /// <summary><c>x [..., in]</c>, <c>w [out, in]</c>, <c>b [out]</c> to <c>[..., out]</c> in x's dtype.</summary>
    public static Tensor Forward(Tensor x, Tensor w, Tensor? b, long tileBytes = DefaultTileBytes)
    {
        long outF = w.shape[0], inF = w.shape[1];
        long rows = Math.Max(1, tileBytes / (inF * x.element_size()));
        if (rows >= outF) return F.linear(x, w.to(x.dtype), b?.to(x.dtype));                // [..., out]

        using var scope = NewDisposeScope();
        var shape = x.shape.ToArray();
        shape[^1] = outF;
        var y = empty(shape, x.dtype, x.device);                                              // [..., out]
        // One buffer for every tile: a fresh allocation per tile would page-fault 16 MB in each time.
        using var buffer = empty([rows, inF], x.dtype, x.device);                             // [rows, in]
        for (long start = 0; start < outF; start += rows)
        {
            long n = Math.Min(rows, outF - start);
            using var tile = buffer.narrow(0, 0, n);                                          // [n, in]
            using (var source = w.narrow(0, start, n)) tile.copy_(source);                    // upcast [n, in]
            using var tileBias = b?.narrow(0, start, n).to(x.dtype);                         // [n]
            using var part = F.linear(x, tile, tileBias);                                     // [..., n]
            using var slot = y.narrow(-1, start, n);                                          // [..., n] view of y
            slot.copy_(part);
        }
        return y.MoveToOuterDisposeScope();
    }
}
