using System.Runtime.Intrinsics;

namespace PetalsSharp.Models.Kernels;

// Multi-row products are compute-bound: a 4×2 tile of 256-bit accumulators issues six loads per eight FMAs. With
// 32 vector registers (AVX-512), a 4×4 tile of 512-bit accumulators fits (16 accumulators, 4 weight vectors, one
// activation), which halves the instructions per FLOP and issues one load per two FMAs.
public static unsafe partial class MatRows
{
    /// <summary>
    /// Whether multi-row products use the 512-bit 4×4 tile where the runtime accelerates it. Off by default: its
    /// 16-lane summation order moved an f16 + adapter parity step just past the 1e-4 tolerance; a benchmark switch
    /// (<c>PETALS_WIDE_TILES=1</c>) until the parity margin is settled.
    /// </summary>
    public static bool UseWideTiles { get; set; } = Environment.GetEnvironmentVariable("PETALS_WIDE_TILES") == "1";

    /// <summary>Four f32 weight rows against four activation rows: <c>y[r·ldy + 0..4)</c> for r in 0..4.</summary>
    static void Tile4Wide(float* w, int n, float* x, float* y, int ldy, float* bias)
    {
        float* w0 = w, w1 = w + n, w2 = w + 2 * n, w3 = w + 3 * n;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default;
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default;
        Vector512<float> d0 = default, d1 = default, d2 = default, d3 = default;
        int i = 0;
        for (; i <= n - 16; i += 16)
        {
            var v0 = Vector512.Load(w0 + i);
            var v1 = Vector512.Load(w1 + i);
            var v2 = Vector512.Load(w2 + i);
            var v3 = Vector512.Load(w3 + i);
            var xv = Vector512.Load(x + i);
            a0 = Vector512.FusedMultiplyAdd(v0, xv, a0);
            a1 = Vector512.FusedMultiplyAdd(v1, xv, a1);
            a2 = Vector512.FusedMultiplyAdd(v2, xv, a2);
            a3 = Vector512.FusedMultiplyAdd(v3, xv, a3);
            xv = Vector512.Load(x + n + i);
            b0 = Vector512.FusedMultiplyAdd(v0, xv, b0);
            b1 = Vector512.FusedMultiplyAdd(v1, xv, b1);
            b2 = Vector512.FusedMultiplyAdd(v2, xv, b2);
            b3 = Vector512.FusedMultiplyAdd(v3, xv, b3);
            xv = Vector512.Load(x + 2 * n + i);
            c0 = Vector512.FusedMultiplyAdd(v0, xv, c0);
            c1 = Vector512.FusedMultiplyAdd(v1, xv, c1);
            c2 = Vector512.FusedMultiplyAdd(v2, xv, c2);
            c3 = Vector512.FusedMultiplyAdd(v3, xv, c3);
            xv = Vector512.Load(x + 3 * n + i);
            d0 = Vector512.FusedMultiplyAdd(v0, xv, d0);
            d1 = Vector512.FusedMultiplyAdd(v1, xv, d1);
            d2 = Vector512.FusedMultiplyAdd(v2, xv, d2);
            d3 = Vector512.FusedMultiplyAdd(v3, xv, d3);
        }
        Finish4(w, n, x, i, y, bias, Vector512.Sum(a0), Vector512.Sum(a1), Vector512.Sum(a2), Vector512.Sum(a3));
        Finish4(w, n, x + n, i, y + ldy, bias, Vector512.Sum(b0), Vector512.Sum(b1), Vector512.Sum(b2), Vector512.Sum(b3));
        Finish4(w, n, x + 2 * n, i, y + 2 * ldy, bias, Vector512.Sum(c0), Vector512.Sum(c1), Vector512.Sum(c2), Vector512.Sum(c3));
        Finish4(w, n, x + 3 * n, i, y + 3 * ldy, bias, Vector512.Sum(d0), Vector512.Sum(d1), Vector512.Sum(d2), Vector512.Sum(d3));
    }

    /// <summary>Adds columns [i, n) of four f32 weight rows against one activation row to the sums, then stores them.</summary>
    static void Finish4(float* w, int n, float* x, int i, float* y, float* bias, float s0, float s1, float s2, float s3)
    {
        for (; i < n; i++)
        {
            float xi = x[i];
            s0 += w[i] * xi;
            s1 += w[n + i] * xi;
            s2 += w[2 * n + i] * xi;
            s3 += w[3 * n + i] * xi;
        }
        Store4(y, bias, s0, s1, s2, s3);
    }
    /// <summary>Four f32 weight rows against one activation row with 512-bit loads (<see cref="UseVector512"/>).</summary>
    static void Tile1Wide(float* w, int n, float* x, float* y, float* bias)
    {
        float* w0 = w, w1 = w + n, w2 = w + 2 * n, w3 = w + 3 * n;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        int i = 0;
        for (; i <= n - 16; i += 16)
        {
            var xv = Vector512.Load(x + i);
            a0 = Vector512.FusedMultiplyAdd(Vector512.Load(w0 + i), xv, a0);
            a1 = Vector512.FusedMultiplyAdd(Vector512.Load(w1 + i), xv, a1);
            a2 = Vector512.FusedMultiplyAdd(Vector512.Load(w2 + i), xv, a2);
            a3 = Vector512.FusedMultiplyAdd(Vector512.Load(w3 + i), xv, a3);
        }
        Finish4(w, n, x, i, y, bias, Vector512.Sum(a0), Vector512.Sum(a1), Vector512.Sum(a2), Vector512.Sum(a3));
    }
}
