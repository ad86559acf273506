using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace PetalsSharp.Models.Kernels;

// Multi-row products are compute-bound: a 4×2 tile of 256-bit accumulators issues six loads per eight FMAs. With
// 32 vector registers (AVX-512), a 4×4 tile of 512-bit accumulators fits (16 accumulators, 4 weight vectors, one
// activation), which halves the instructions per FLOP and issues one load per two FMAs. 16-bit weights are widened in
// registers (two instructions per weight vector, shared by four activation rows) rather than through a scratch copy.
//
// A tile of four weight rows comes from DRAM in its first row group and is reused from L1 by the others. While it is
// reused the hardware prefetcher sees no new lines and stops running ahead, so without help every tile would start
// cold: fetch and arithmetic would add up instead of overlapping (8 rows of a 2048×768 f32 matrix ran at 6.8 GB/s on
// one core against 10–11 for one row). The first row group therefore prefetches the next tile, line for line.
public static unsafe partial class MatRows
{
    /// <summary>
    /// Whether multi-row products use the 512-bit 4×4 tiles where the runtime accelerates them (on by default there;
    /// <c>PETALS_WIDE_TILES=0</c> turns them off for a benchmark's A/B).
    /// </summary>
    public static bool UseWideTiles { get; set; } = Environment.GetEnvironmentVariable("PETALS_WIDE_TILES") != "0";

    /// <summary>
    /// Output rows from <paramref name="o"/> in tiles of four for every activation row; returns where it stopped (the
    /// last &lt; 4 output rows are left to the caller).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static int WideRange<T>(byte* w, int n, float* x, int rows, float* y, int ldy, float* bias, int o, int o1)
        where T : struct, IElement
    {
        long stride = (long)n * T.Size;
        int groups = rows / 4, passes = groups + (rows % 4 >= 2 ? 1 : 0) + (rows % 2);
        for (; o + Tile <= o1; o += Tile)
        {
            byte* t = w + o * stride;
            // Within the caller's slice only: another worker streams the rows after it.
            byte* next = o + 2 * Tile <= o1 ? t + Tile * stride : null;
            float* b = bias is null ? null : bias + o;
            int r = 0, pass = 0;
            for (; r + 4 <= rows; r += 4) Tile4x4<T>(t, stride, n, x + (long)r * n, y + (long)r * ldy + o, ldy, b, next, PrefetchRows(pass++, passes));
            if (r + 2 <= rows)
            {
                Tile4x2<T>(t, stride, n, x + (long)r * n, y + (long)r * ldy + o, ldy, b, next, PrefetchRows(pass++, passes));
                r += 2;
            }
            if (r < rows) Tile4x1<T>(t, stride, n, x + (long)r * n, y + (long)r * ldy + o, b, next, PrefetchRows(pass, passes));
        }
        return o;
    }

    /// <summary>
    /// The rows of the next tile that pass <paramref name="pass"/> of <paramref name="passes"/> over this tile prefetches
    /// (bit j: row j): every pass takes its share, so the next tile's lines are requested over the whole time this one
    /// is reused, not all during its first pass. All four in the first pass left 16-row f32 products at 96 GFLOP/s per
    /// core against 148 with the weight in cache (Zen 5, 2026-12-03).
    /// </summary>
    static int PrefetchRows(int pass, int passes) => passes <= 1 ? 0b1111 : SpreadRows ? Share(pass, passes) : pass == 0 ? 0b1111 : 0;

    static int Share(int pass, int passes)
    {
        int mask = 0;
        for (int j = pass; j < Tile; j += passes) mask |= 1 << j;
        return mask;
    }

    /// <summary>
    /// Whether multi-row passes share the next tile's prefetch (the default) or the first pass issues all of it
    /// (<c>PETALS_SPREAD=0</c>), for a benchmark's A/B.
    /// </summary>
    public static bool SpreadRows { get; set; } = Environment.GetEnvironmentVariable("PETALS_SPREAD") != "0";

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void PrefetchTile<T>(byte* next, long stride, int i, int rows) where T : struct, IElement
    {
        // One 64-byte line per weight row: every iteration for f32 (16 floats), every other one for 16-bit weights.
        if (next is null || !Sse.IsSupported || (T.Size == 2 && (i & 31) != 0)) return;
        byte* p = next + (long)i * T.Size;
        if ((rows & 1) != 0) PrefetchWeight(p, 1);
        if ((rows & 2) != 0) PrefetchWeight(p + stride, 1);
        if ((rows & 4) != 0) PrefetchWeight(p + 2 * stride, 1);
        if ((rows & 8) != 0) PrefetchWeight(p + 3 * stride, 1);
    }

    /// <summary>Four weight rows against four activation rows: <c>y[r·ldy + 0..4)</c> for r in 0..4.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Tile4x4<T>(byte* w, long stride, int n, float* x, float* y, int ldy, float* bias, byte* next, int prefetchRows = 0b1111)
        where T : struct, IElement
    {
        byte* w0 = w, w1 = w + stride, w2 = w + 2 * stride, w3 = w + 3 * stride;
        float* x1 = x + n, x2 = x + 2 * n, x3 = x + 3 * n;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default;
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default;
        Vector512<float> d0 = default, d1 = default, d2 = default, d3 = default;
        int i = 0;
        for (; i <= n - 16; i += 16)
        {
            PrefetchTile<T>(next, stride, i, prefetchRows);
            var v0 = T.Load16(w0, i);
            var v1 = T.Load16(w1, i);
            var v2 = T.Load16(w2, i);
            var v3 = T.Load16(w3, i);
            var xv = Vector512.Load(x + i);
            a0 = Vector512.FusedMultiplyAdd(v0, xv, a0);
            a1 = Vector512.FusedMultiplyAdd(v1, xv, a1);
            a2 = Vector512.FusedMultiplyAdd(v2, xv, a2);
            a3 = Vector512.FusedMultiplyAdd(v3, xv, a3);
            xv = Vector512.Load(x1 + i);
            b0 = Vector512.FusedMultiplyAdd(v0, xv, b0);
            b1 = Vector512.FusedMultiplyAdd(v1, xv, b1);
            b2 = Vector512.FusedMultiplyAdd(v2, xv, b2);
            b3 = Vector512.FusedMultiplyAdd(v3, xv, b3);
            xv = Vector512.Load(x2 + i);
            c0 = Vector512.FusedMultiplyAdd(v0, xv, c0);
            c1 = Vector512.FusedMultiplyAdd(v1, xv, c1);
            c2 = Vector512.FusedMultiplyAdd(v2, xv, c2);
            c3 = Vector512.FusedMultiplyAdd(v3, xv, c3);
            xv = Vector512.Load(x3 + i);
            d0 = Vector512.FusedMultiplyAdd(v0, xv, d0);
            d1 = Vector512.FusedMultiplyAdd(v1, xv, d1);
            d2 = Vector512.FusedMultiplyAdd(v2, xv, d2);
            d3 = Vector512.FusedMultiplyAdd(v3, xv, d3);
        }
        float* s = stackalloc float[16];   // every sum before the first call, as in Tile2x8
        s[0] = Vector512.Sum(a0); s[1] = Vector512.Sum(a1); s[2] = Vector512.Sum(a2); s[3] = Vector512.Sum(a3);
        s[4] = Vector512.Sum(b0); s[5] = Vector512.Sum(b1); s[6] = Vector512.Sum(b2); s[7] = Vector512.Sum(b3);
        s[8] = Vector512.Sum(c0); s[9] = Vector512.Sum(c1); s[10] = Vector512.Sum(c2); s[11] = Vector512.Sum(c3);
        s[12] = Vector512.Sum(d0); s[13] = Vector512.Sum(d1); s[14] = Vector512.Sum(d2); s[15] = Vector512.Sum(d3);
        for (int r = 0; r < 4; r++) Finish4<T>(w, stride, n, x + (long)r * n, i, y + (long)r * ldy, bias, s[4 * r], s[4 * r + 1], s[4 * r + 2], s[4 * r + 3]);
    }

    /// <summary>Two weight rows against eight activation rows: <c>y[r·ldy + 0..2)</c> for r in 0..8.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Tile2x8<T>(byte* w, long stride, int n, float* x, float* y, int ldy, float* bias)
        where T : struct, IElement
    {
        byte* w1 = w + stride;
        float* x1 = x + n, x2 = x1 + n, x3 = x2 + n, x4 = x3 + n, x5 = x4 + n, x6 = x5 + n, x7 = x6 + n;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default, b4 = default, b5 = default, b6 = default, b7 = default;
        int i = 0;
        for (; i <= n - 16; i += 16)
        {
            var v0 = T.Load16(w, i);
            var v1 = T.Load16(w1, i);
            var xv = Vector512.Load(x + i);
            a0 = Vector512.FusedMultiplyAdd(v0, xv, a0);
            b0 = Vector512.FusedMultiplyAdd(v1, xv, b0);
            xv = Vector512.Load(x1 + i);
            a1 = Vector512.FusedMultiplyAdd(v0, xv, a1);
            b1 = Vector512.FusedMultiplyAdd(v1, xv, b1);
            xv = Vector512.Load(x2 + i);
            a2 = Vector512.FusedMultiplyAdd(v0, xv, a2);
            b2 = Vector512.FusedMultiplyAdd(v1, xv, b2);
            xv = Vector512.Load(x3 + i);
            a3 = Vector512.FusedMultiplyAdd(v0, xv, a3);
            b3 = Vector512.FusedMultiplyAdd(v1, xv, b3);
            xv = Vector512.Load(x4 + i);
            a4 = Vector512.FusedMultiplyAdd(v0, xv, a4);
            b4 = Vector512.FusedMultiplyAdd(v1, xv, b4);
            xv = Vector512.Load(x5 + i);
            a5 = Vector512.FusedMultiplyAdd(v0, xv, a5);
            b5 = Vector512.FusedMultiplyAdd(v1, xv, b5);
            xv = Vector512.Load(x6 + i);
            a6 = Vector512.FusedMultiplyAdd(v0, xv, a6);
            b6 = Vector512.FusedMultiplyAdd(v1, xv, b6);
            xv = Vector512.Load(x7 + i);
            a7 = Vector512.FusedMultiplyAdd(v0, xv, a7);
            b7 = Vector512.FusedMultiplyAdd(v1, xv, b7);
        }
        // Every sum before the first call: a vector live across a call is spilled at each definition, in the loop.
        float* s = stackalloc float[16];
        s[0] = Vector512.Sum(a0); s[1] = Vector512.Sum(b0); s[2] = Vector512.Sum(a1); s[3] = Vector512.Sum(b1);
        s[4] = Vector512.Sum(a2); s[5] = Vector512.Sum(b2); s[6] = Vector512.Sum(a3); s[7] = Vector512.Sum(b3);
        s[8] = Vector512.Sum(a4); s[9] = Vector512.Sum(b4); s[10] = Vector512.Sum(a5); s[11] = Vector512.Sum(b5);
        s[12] = Vector512.Sum(a6); s[13] = Vector512.Sum(b6); s[14] = Vector512.Sum(a7); s[15] = Vector512.Sum(b7);
        for (int r = 0; r < 8; r++) Finish2<T>(w, stride, n, x + (long)r * n, i, y + (long)r * ldy, bias, s[2 * r], s[2 * r + 1]);
    }

    /// <summary>Adds columns [i, n) of two weight rows against one activation row to the sums, then stores them.</summary>
    static void Finish2<T>(byte* w, long stride, int n, float* x, int i, float* y, float* bias, float s0, float s1)
        where T : struct, IElement
    {
        for (; i < n; i++)
        {
            s0 += T.Load1(w, i) * x[i];
            s1 += T.Load1(w + stride, i) * x[i];
        }
        y[0] = bias is null ? s0 : s0 + bias[0];
        y[1] = bias is null ? s1 : s1 + bias[1];
    }

    /// <summary>Four weight rows against two activation rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Tile4x2<T>(byte* w, long stride, int n, float* x, float* y, int ldy, float* bias, byte* next, int prefetchRows = 0b1111)
        where T : struct, IElement
    {
        byte* w0 = w, w1 = w + stride, w2 = w + 2 * stride, w3 = w + 3 * stride;
        float* x1 = x + n;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default;
        int i = 0;
        for (; i <= n - 16; i += 16)
        {
            PrefetchTile<T>(next, stride, i, prefetchRows);
            var v0 = T.Load16(w0, i);
            var v1 = T.Load16(w1, i);
            var v2 = T.Load16(w2, i);
            var v3 = T.Load16(w3, i);
            var xv = Vector512.Load(x + i);
            a0 = Vector512.FusedMultiplyAdd(v0, xv, a0);
            a1 = Vector512.FusedMultiplyAdd(v1, xv, a1);
            a2 = Vector512.FusedMultiplyAdd(v2, xv, a2);
            a3 = Vector512.FusedMultiplyAdd(v3, xv, a3);
            xv = Vector512.Load(x1 + i);
            b0 = Vector512.FusedMultiplyAdd(v0, xv, b0);
            b1 = Vector512.FusedMultiplyAdd(v1, xv, b1);
            b2 = Vector512.FusedMultiplyAdd(v2, xv, b2);
            b3 = Vector512.FusedMultiplyAdd(v3, xv, b3);
        }
        float* s = stackalloc float[8];   // every sum before the first call, as in Tile2x8
        s[0] = Vector512.Sum(a0); s[1] = Vector512.Sum(a1); s[2] = Vector512.Sum(a2); s[3] = Vector512.Sum(a3);
        s[4] = Vector512.Sum(b0); s[5] = Vector512.Sum(b1); s[6] = Vector512.Sum(b2); s[7] = Vector512.Sum(b3);
        Finish4<T>(w, stride, n, x, i, y, bias, s[0], s[1], s[2], s[3]);
        Finish4<T>(w, stride, n, x1, i, y + ldy, bias, s[4], s[5], s[6], s[7]);
    }

    /// <summary>Four weight rows against one activation row.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Tile4x1<T>(byte* w, long stride, int n, float* x, float* y, float* bias, byte* next, int prefetchRows = 0b1111)
        where T : struct, IElement
    {
        byte* w0 = w, w1 = w + stride, w2 = w + 2 * stride, w3 = w + 3 * stride;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        int i = 0;
        for (; i <= n - 16; i += 16)
        {
            PrefetchTile<T>(next, stride, i, prefetchRows);
            var xv = Vector512.Load(x + i);
            a0 = Vector512.FusedMultiplyAdd(T.Load16(w0, i), xv, a0);
            a1 = Vector512.FusedMultiplyAdd(T.Load16(w1, i), xv, a1);
            a2 = Vector512.FusedMultiplyAdd(T.Load16(w2, i), xv, a2);
            a3 = Vector512.FusedMultiplyAdd(T.Load16(w3, i), xv, a3);
        }
        Finish4<T>(w, stride, n, x, i, y, bias, Vector512.Sum(a0), Vector512.Sum(a1), Vector512.Sum(a2), Vector512.Sum(a3));
    }

    /// <summary>Adds columns [i, n) of four weight rows against one activation row to the sums, then stores them.</summary>
    static void Finish4<T>(byte* w, long stride, int n, float* x, int i, float* y, float* bias, float s0, float s1, float s2, float s3)
        where T : struct, IElement
    {
        for (; i < n; i++)
        {
            float xi = x[i];
            s0 += T.Load1(w, i) * xi;
            s1 += T.Load1(w + stride, i) * xi;
            s2 += T.Load1(w + 2 * stride, i) * xi;
            s3 += T.Load1(w + 3 * stride, i) * xi;
        }
        Store4(y, bias, s0, s1, s2, s3);
    }

    /// <summary>
    /// Whether 1-row 512-bit f32 tiles prefetch the next tile into L2 as they stream this one (<c>PETALS_PREFETCH1=0</c>
    /// turns it off): 8 % more decode tok/s on the 100M model (Xeon, 2026-12-03, three interleaved pairs).
    /// </summary>
    internal static bool PrefetchOneRow { get; set; } = Environment.GetEnvironmentVariable("PETALS_PREFETCH1") != "0";
}
