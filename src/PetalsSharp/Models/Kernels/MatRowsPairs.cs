using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace PetalsSharp.Models.Kernels;

// One activation row against 16-bit weights without a shuffle per load. A 32-bit lane holding two 16-bit weights
// gives both as f32 with one ALU op each: the even one by a left shift, the odd one by masking the low half away.
// The activation row is reordered once per call to match (evens then odds within each block), so the inner loop
// is load, shift, and, two FMAs, and the shuffle port that vpmovzxwd needs stays free.
public static unsafe partial class MatRows
{
    /// <summary>
    /// Whether 1-row products (f32, and 16-bit with <see cref="UsePairs"/>) use 512-bit vectors where the runtime
    /// accelerates them. On by default (<c>PETALS_VECTOR512=0</c> turns it off): on an EPYC (2026-12-02) f32 streamed the
    /// same either way, while on a Xeon with AVX-512 (2026-12-03) the 512-bit f32 tile with its next-tile prefetch
    /// decoded the 100M model at 94–96 tok/s against 87–89. The 512-bit pair kernel is still off (<see cref="UsePairs"/>).
    /// </summary>
    public static bool UseVector512 { get; set; } = Environment.GetEnvironmentVariable("PETALS_VECTOR512") != "0";

    /// <summary>
    /// Whether 1-row 16-bit products use the shift/mask kernel (else the widening one). Off: it measured no faster
    /// than widening loads on a 32000×768 weight (bf16 20.1 vs 21.6 GB/s); a benchmark switch (<c>matrows --pairs true</c>).
    /// </summary>
    public static bool UsePairs { get; set; }

    /// <summary>Rows [o, o1) in tiles of four for one activation row; returns the first row left for the scalar tail.</summary>
    static int PairRange<P>(byte* w, int n, float* x, float* y, float* bias, int o, int o1) where P : struct, IPair
    {
        long rowBytes = (long)n * 2;
        bool wide = UseVector512 && Vector512.IsHardwareAccelerated;
        int block = wide ? 32 : 16;
        if (n < block) return o;
        float* xp = Scratch(n);
        Deinterleave(x, xp, n, block);
        for (; o + Tile <= o1; o += Tile)
        {
            float* b = bias is null ? null : bias + o;
            if (wide) Pairs512<P>(w + o * rowBytes, n, x, xp, y + o, b);
            else Pairs256<P>(w + o * rowBytes, n, x, xp, y + o, b);
        }
        return o;
    }

    /// <summary>Within each block of <paramref name="block"/> floats: the even-indexed ones, then the odd-indexed ones.</summary>
    static void Deinterleave(float* x, float* xp, int n, int block)
    {
        int half = block / 2;
        for (int i = 0; i + block <= n; i += block)
            for (int k = 0; k < half; k++)
            {
                xp[i + k] = x[i + 2 * k];
                xp[i + half + k] = x[i + 2 * k + 1];
            }
    }

    static void Pairs256<P>(byte* w, int n, float* x, float* xp, float* y, float* bias) where P : struct, IPair
    {
        long stride = (long)n * 2;
        byte* w0 = w, w1 = w + stride, w2 = w + 2 * stride, w3 = w + 3 * stride;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector256<float> b0 = default, b1 = default, b2 = default, b3 = default;
        int i = 0;
        for (; i <= n - 16; i += 16)
        {
            var xe = Vector256.Load(xp + i);
            var xo = Vector256.Load(xp + i + 8);
            var v = Vector256.Load((uint*)(w0 + 2L * i));
            a0 = Fmadd(P.Even(v), xe, a0);
            b0 = Fmadd(P.Odd(v), xo, b0);
            v = Vector256.Load((uint*)(w1 + 2L * i));
            a1 = Fmadd(P.Even(v), xe, a1);
            b1 = Fmadd(P.Odd(v), xo, b1);
            v = Vector256.Load((uint*)(w2 + 2L * i));
            a2 = Fmadd(P.Even(v), xe, a2);
            b2 = Fmadd(P.Odd(v), xo, b2);
            v = Vector256.Load((uint*)(w3 + 2L * i));
            a3 = Fmadd(P.Even(v), xe, a3);
            b3 = Fmadd(P.Odd(v), xo, b3);
        }
        float s0 = Vector256.Sum(a0 + b0), s1 = Vector256.Sum(a1 + b1), s2 = Vector256.Sum(a2 + b2), s3 = Vector256.Sum(a3 + b3);
        for (; i < n; i++)
        {
            float xi = x[i];
            s0 += P.Load1(w0, i) * xi;
            s1 += P.Load1(w1, i) * xi;
            s2 += P.Load1(w2, i) * xi;
            s3 += P.Load1(w3, i) * xi;
        }
        Store4(y, bias, s0, s1, s2, s3);
    }

    static void Pairs512<P>(byte* w, int n, float* x, float* xp, float* y, float* bias) where P : struct, IPair
    {
        long stride = (long)n * 2;
        byte* w0 = w, w1 = w + stride, w2 = w + 2 * stride, w3 = w + 3 * stride;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default;
        int i = 0;
        for (; i <= n - 32; i += 32)
        {
            var xe = Vector512.Load(xp + i);
            var xo = Vector512.Load(xp + i + 16);
            var v = Vector512.Load((uint*)(w0 + 2L * i));
            a0 = Vector512.FusedMultiplyAdd(P.Even(v), xe, a0);
            b0 = Vector512.FusedMultiplyAdd(P.Odd(v), xo, b0);
            v = Vector512.Load((uint*)(w1 + 2L * i));
            a1 = Vector512.FusedMultiplyAdd(P.Even(v), xe, a1);
            b1 = Vector512.FusedMultiplyAdd(P.Odd(v), xo, b1);
            v = Vector512.Load((uint*)(w2 + 2L * i));
            a2 = Vector512.FusedMultiplyAdd(P.Even(v), xe, a2);
            b2 = Vector512.FusedMultiplyAdd(P.Odd(v), xo, b2);
            v = Vector512.Load((uint*)(w3 + 2L * i));
            a3 = Vector512.FusedMultiplyAdd(P.Even(v), xe, a3);
            b3 = Vector512.FusedMultiplyAdd(P.Odd(v), xo, b3);
        }
        float s0 = Vector512.Sum(a0 + b0), s1 = Vector512.Sum(a1 + b1), s2 = Vector512.Sum(a2 + b2), s3 = Vector512.Sum(a3 + b3);
        for (; i < n; i++)
        {
            float xi = x[i];
            s0 += P.Load1(w0, i) * xi;
            s1 += P.Load1(w1, i) * xi;
            s2 += P.Load1(w2, i) * xi;
            s3 += P.Load1(w3, i) * xi;
        }
        Store4(y, bias, s0, s1, s2, s3);
    }

    /// <summary>Two 16-bit weights per 32-bit lane to f32: the even (low) one and the odd (high) one.</summary>
    interface IPair
    {
        static abstract Vector256<float> Even(Vector256<uint> v);
        static abstract Vector256<float> Odd(Vector256<uint> v);
        static abstract Vector512<float> Even(Vector512<uint> v);
        static abstract Vector512<float> Odd(Vector512<uint> v);
        static abstract float Load1(byte* row, int i);
    }

    readonly struct Bf16Pair : IPair
    {
        public static Vector256<float> Even(Vector256<uint> v) => Vector256.ShiftLeft(v, 16).AsSingle();
        public static Vector256<float> Odd(Vector256<uint> v) => (v & Vector256.Create(0xFFFF0000u)).AsSingle();
        public static Vector512<float> Even(Vector512<uint> v) => Vector512.ShiftLeft(v, 16).AsSingle();
        public static Vector512<float> Odd(Vector512<uint> v) => (v & Vector512.Create(0xFFFF0000u)).AsSingle();
        public static float Load1(byte* row, int i) => Bf16.Load1(row, i);
    }

    /// <summary>The same exact half-to-f32 rescale as <see cref="F16"/>, on a lane that holds the half in its top 16 bits.</summary>
    readonly struct F16Pair : IPair
    {
        const float TwoTo112 = 5.192296858534828E+33f;

        public static Vector256<float> Even(Vector256<uint> v) => Top(Vector256.ShiftLeft(v, 16).AsInt32());
        public static Vector256<float> Odd(Vector256<uint> v) => Top((v & Vector256.Create(0xFFFF0000u)).AsInt32());
        public static Vector512<float> Even(Vector512<uint> v) => Top(Vector512.ShiftLeft(v, 16).AsInt32());
        public static Vector512<float> Odd(Vector512<uint> v) => Top((v & Vector512.Create(0xFFFF0000u)).AsInt32());
        public static float Load1(byte* row, int i) => F16.Load1(row, i);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static Vector256<float> Top(Vector256<int> h)
        {
            var bits = Vector256.ShiftRightArithmetic(h, 3) & Vector256.Create(unchecked((int)0x8FFFFFFF));
            var f = bits.AsSingle() * Vector256.Create(TwoTo112);
            var infNan = Vector256.GreaterThan(h & Vector256.Create(0x7FFF0000), Vector256.Create(0x7BFFFFFF));
            return (f.AsInt32() | (infNan & Vector256.Create(0x7F800000))).AsSingle();
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static Vector512<float> Top(Vector512<int> h)
        {
            var bits = Vector512.ShiftRightArithmetic(h, 3) & Vector512.Create(unchecked((int)0x8FFFFFFF));
            var f = bits.AsSingle() * Vector512.Create(TwoTo112);
            var infNan = Vector512.GreaterThan(h & Vector512.Create(0x7FFF0000), Vector512.Create(0x7BFFFFFF));
            return (f.AsInt32() | (infNan & Vector512.Create(0x7F800000))).AsSingle();
        }
    }
}
