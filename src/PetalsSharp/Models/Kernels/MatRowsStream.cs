using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace PetalsSharp.Models.Kernels;

// One activation row against f32 weights, read in address order. A slice of a row-major matrix is one contiguous
// range, so the kernel finishes each weight row before the next and prefetches a fixed distance ahead of the read
// position: one stream per core. The earlier tile of four rows read four streams a row apart (3–8 KB) and prefetched
// the next tile row by row; on a Zen 5 EPYC (2026-12-03, 15 interleaved in-process rounds, 2 threads) it streamed
// 36–56 GB/s where this reads 48–78 GB/s on the 100M model's shapes (2048×768, 768×2048, 32000×768).
public static unsafe partial class MatRows
{
    /// <summary>Bytes ahead of the read position that f32 one-row products prefetch (2 and 8 KB measured the same).</summary>
    const int StreamPrefetchBytes = 4096;

    /// <summary>
    /// Whether weight prefetches carry the non-temporal hint (<c>prefetchnta</c>; the default) rather than asking for
    /// L2 (f32 rows, multi-row tiles) or L1 (16-bit tiles). Weights are read once per step and never soon again; on a
    /// Zen 5 EPYC (2026-12-04), where L3 is filled by lines leaving L2, the hint kept that stream out of the caches:
    /// against llama.cpp, f32 decode went from 0.98 to 1.12 of its speed, f32 prefill from 1.13 to 1.21 and bf16 prefill
    /// from 1.28 to 1.39, while bf16 decode stayed at 1.29–1.32 (paired runs, docs/benchmarks.md).
    /// <c>PETALS_PREFETCH_NTA=0</c> restores the old hints for an A/B.
    /// </summary>
    public static readonly bool NonTemporalPrefetch = Environment.GetEnvironmentVariable("PETALS_PREFETCH_NTA") != "0";

    /// <summary>Prefetches the line at <paramref name="p"/> for a weight stream: non-temporal, or into <paramref name="level"/> (0: L1, 1: L2).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void PrefetchWeight(byte* p, int level)
    {
        if (NonTemporalPrefetch) Sse.PrefetchNonTemporal(p);
        else if (level == 0) Sse.Prefetch0(p);
        else Sse.Prefetch1(p);
    }

    /// <summary>
    /// Whether one-row f32 products read their rows in address order (<see cref="StreamRange"/>; the default). Off
    /// (<c>PETALS_F32_STREAM=0</c>), they use the four-row tiles, for a benchmark's A/B.
    /// </summary>
    public static bool UseRowStream { get; set; } = Environment.GetEnvironmentVariable("PETALS_F32_STREAM") != "0";

    /// <summary><c>y[o] = W[o, :] · x (+ bias[o])</c> for every row of [<paramref name="o0"/>, <paramref name="o1"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void StreamRange(float* w, int n, float* x, float* y, float* bias, int o0, int o1)
    {
        // Prefetches stop at the slice's end: the rows after it are another worker's stream (prefetching on up to the
        // matrix's end measured the same, 2026-12-03).
        byte* end = (byte*)(w + (long)o1 * n);
        bool wide = UseVector512 && Vector512.IsHardwareAccelerated;
        for (int o = o0; o < o1; o++)
        {
            float* row = w + (long)o * n;
            float dot = wide ? StreamDot512(row, x, n, end) : StreamDot256(row, x, n, end);
            y[o] = bias is null ? dot : dot + bias[o];
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void PrefetchAhead(float* at, byte* end)
    {
        byte* p = (byte*)at + StreamPrefetchBytes;
        if (Sse.IsSupported && p + 128 <= end)
        {
            PrefetchWeight(p, 1);
            PrefetchWeight(p + 64, 1);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static float StreamDot512(float* w, float* x, int n, byte* end)
    {
        Vector512<float> a0 = default, a1 = default;
        int i = 0;
        for (; i <= n - 32; i += 32)   // two cache lines per iteration
        {
            PrefetchAhead(w + i, end);
            a0 = Vector512.FusedMultiplyAdd(Vector512.Load(w + i), Vector512.Load(x + i), a0);
            a1 = Vector512.FusedMultiplyAdd(Vector512.Load(w + i + 16), Vector512.Load(x + i + 16), a1);
        }
        float sum = Vector512.Sum(a0 + a1);
        for (; i < n; i++) sum += w[i] * x[i];
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static float StreamDot256(float* w, float* x, int n, byte* end)
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        int i = 0;
        for (; i <= n - 32; i += 32)
        {
            PrefetchAhead(w + i, end);
            a0 = Fmadd(Vector256.Load(w + i), Vector256.Load(x + i), a0);
            a1 = Fmadd(Vector256.Load(w + i + 8), Vector256.Load(x + i + 8), a1);
            a2 = Fmadd(Vector256.Load(w + i + 16), Vector256.Load(x + i + 16), a2);
            a3 = Fmadd(Vector256.Load(w + i + 24), Vector256.Load(x + i + 24), a3);
        }
        var acc = (a0 + a1) + (a2 + a3);
        for (; i <= n - 8; i += 8) acc = Fmadd(Vector256.Load(w + i), Vector256.Load(x + i), acc);
        float sum = Vector256.Sum(acc);
        for (; i < n; i++) sum += w[i] * x[i];
        return sum;
    }
}
