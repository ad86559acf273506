using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace PetalsSharp.Models.Kernels;

// The SIMD kernels behind MatRows. Each is generic over the stored element type (a struct implementing IElement),
// so the JIT compiles one specialised copy per dtype with the conversion inlined into the loop.
public static unsafe partial class MatRows
{
    const int Tile = 4;   // weight rows read together: 4 accumulators (× 2 activation rows) fit the 16 ymm registers

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Range<T>(byte* w, int n, float* x, int rows, float* y, int ldy, float* bias, int o0, int o1)
        where T : struct, IElement
    {
        long rowBytes = (long)n * T.Size;
        int o = o0;
        if (rows == 1)
        {
            if (typeof(T) == typeof(F32) && UseRowStream)
            {
                StreamRange((float*)w, n, x, y, bias, o0, o1);
                return;
            }
            if (UsePairs && typeof(T) == typeof(Bf16)) o = PairRange<Bf16Pair>(w, n, x, y, bias, o, o1);
            else if (UsePairs && typeof(T) == typeof(F16)) o = PairRange<F16Pair>(w, n, x, y, bias, o, o1);
            else if (typeof(T) == typeof(F32) && UseVector512 && Vector512.IsHardwareAccelerated)
                for (; o + Tile <= o1; o += Tile)
                    Tile4x1<F32>(w + o * rowBytes, rowBytes, n, x, y + o, bias is null ? null : bias + o,
                        PrefetchOneRow && o + 2 * Tile <= o1 ? w + (o + Tile) * rowBytes : null);
            for (; o + Tile <= o1; o += Tile)
                Tile1<T>(w + o * rowBytes, n, x, y + o, bias is null ? null : bias + o);
        }
        else
        {
            // 16-bit tiles are converted once into an L1-resident f32 copy, then reused by every activation row pair.
            float* scratch = typeof(T) == typeof(F32) ? null : Scratch(Tile * n);
            bool wide = UseWideTiles && Vector512.IsHardwareAccelerated;
            // f16 stays on the scratch path: its integer-SIMD widening costs more than an FMA per lane, so converting a
            // tile once beats converting it again for every group of four activation rows.
            if (wide && typeof(T) != typeof(F16)) o = WideRange<T>(w, n, x, rows, y, ldy, bias, o, o1);
            for (; o + Tile <= o1; o += Tile)
            {
                float* t = (float*)(w + o * rowBytes);
                if (scratch is not null)
                {
                    Convert<T>(w + o * rowBytes, scratch, Tile * n);
                    t = scratch;
                }
                float* b = bias is null ? null : bias + o;
                int r = 0;
                if (wide)
                    for (; r + 4 <= rows; r += 4) Tile4x4<F32>((byte*)t, 4L * n, n, x + (long)r * n, y + (long)r * ldy + o, ldy, b, null);
                for (; r + 2 <= rows; r += 2) Tile2(t, n, x + (long)r * n, y + (long)r * ldy + o, ldy, b);
                if (r < rows) Tile1<F32>((byte*)t, n, x + (long)r * n, y + (long)r * ldy + o, b);
            }
        }
        for (; o < o1; o++)
            for (int r = 0; r < rows; r++)
            {
                float dot = Dot<T>(w + o * rowBytes, x + (long)r * n, n);
                y[(long)r * ldy + o] = bias is null ? dot : dot + bias[o];
            }
    }

    /// <summary>Four weight rows against one activation row: <c>y[0..4)</c>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Tile1<T>(byte* w, int n, float* x, float* y, float* bias) where T : struct, IElement
    {
        long stride = (long)n * T.Size;
        byte* w0 = w, w1 = w + stride, w2 = w + 2 * stride, w3 = w + 3 * stride;
        // The next tile, one line ahead per iteration. A 16-bit row costs three times the instructions per cache line
        // of an f32 row, so the out-of-order window holds fewer lines in flight and the hardware prefetcher alone
        // left bf16 at about half of f32's bytes per second (measured 5.9 -> 9.0-9.6 GB/s on one core).
        byte* next = w + 4 * stride;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        int i = 0;
        for (; i <= n - 8; i += 8)
        {
            if (T.Size == 2 && Sse.IsSupported) PrefetchWeight(next + i * 8, 0);
            var xv = Vector256.Load(x + i);
            a0 = Fmadd(T.Load8(w0, i), xv, a0);
            a1 = Fmadd(T.Load8(w1, i), xv, a1);
            a2 = Fmadd(T.Load8(w2, i), xv, a2);
            a3 = Fmadd(T.Load8(w3, i), xv, a3);
        }
        float s0 = Vector256.Sum(a0), s1 = Vector256.Sum(a1), s2 = Vector256.Sum(a2), s3 = Vector256.Sum(a3);
        for (; i < n; i++)
        {
            float xi = x[i];
            s0 += T.Load1(w0, i) * xi;
            s1 += T.Load1(w1, i) * xi;
            s2 += T.Load1(w2, i) * xi;
            s3 += T.Load1(w3, i) * xi;
        }
        Store4(y, bias, s0, s1, s2, s3);
    }

    /// <summary>Four f32 weight rows against two activation rows: <c>y[0..4)</c> and <c>y[ldy..ldy+4)</c>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Tile2(float* w, int n, float* x, float* y, int ldy, float* bias)
    {
        float* w0 = w, w1 = w + n, w2 = w + 2 * n, w3 = w + 3 * n, x1 = x + n;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector256<float> b0 = default, b1 = default, b2 = default, b3 = default;
        int i = 0;
        for (; i <= n - 8; i += 8)
        {
            var v0 = Vector256.Load(w0 + i);
            var v1 = Vector256.Load(w1 + i);
            var v2 = Vector256.Load(w2 + i);
            var v3 = Vector256.Load(w3 + i);
            var xa = Vector256.Load(x + i);
            a0 = Fmadd(v0, xa, a0);
            a1 = Fmadd(v1, xa, a1);
            a2 = Fmadd(v2, xa, a2);
            a3 = Fmadd(v3, xa, a3);
            var xb = Vector256.Load(x1 + i);
            b0 = Fmadd(v0, xb, b0);
            b1 = Fmadd(v1, xb, b1);
            b2 = Fmadd(v2, xb, b2);
            b3 = Fmadd(v3, xb, b3);
        }
        float s0 = Vector256.Sum(a0), s1 = Vector256.Sum(a1), s2 = Vector256.Sum(a2), s3 = Vector256.Sum(a3);
        float t0 = Vector256.Sum(b0), t1 = Vector256.Sum(b1), t2 = Vector256.Sum(b2), t3 = Vector256.Sum(b3);
        for (; i < n; i++)
        {
            float xi = x[i], xj = x1[i];
            s0 += w0[i] * xi; s1 += w1[i] * xi; s2 += w2[i] * xi; s3 += w3[i] * xi;
            t0 += w0[i] * xj; t1 += w1[i] * xj; t2 += w2[i] * xj; t3 += w3[i] * xj;
        }
        Store4(y, bias, s0, s1, s2, s3);
        Store4(y + ldy, bias, t0, t1, t2, t3);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static float Dot<T>(byte* w, float* x, int n) where T : struct, IElement
    {
        Vector256<float> a0 = default, a1 = default;
        int i = 0;
        for (; i <= n - 16; i += 16)
        {
            a0 = Fmadd(T.Load8(w, i), Vector256.Load(x + i), a0);
            a1 = Fmadd(T.Load8(w, i + 8), Vector256.Load(x + i + 8), a1);
        }
        float sum = Vector256.Sum(a0 + a1);
        for (; i < n; i++) sum += T.Load1(w, i) * x[i];
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Convert<T>(byte* w, float* dst, int count) where T : struct, IElement
    {
        byte* next = w + (long)count * T.Size;   // the next tile, as in Tile1
        int i = 0;
        for (; i <= count - 8; i += 8)
        {
            if (T.Size == 2 && Sse.IsSupported && (i & 31) == 0) PrefetchWeight(next + i * 2, 0);
            T.Load8(w, i).Store(dst + i);
        }
        for (; i < count; i++) dst[i] = T.Load1(w, i);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Store4(float* y, float* bias, float s0, float s1, float s2, float s3)
    {
        if (bias is not null)
        {
            s0 += bias[0]; s1 += bias[1]; s2 += bias[2]; s3 += bias[3];
        }
        y[0] = s0; y[1] = s1; y[2] = s2; y[3] = s3;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Fmadd(Vector256<float> a, Vector256<float> b, Vector256<float> c) =>
        Fma.IsSupported ? Fma.MultiplyAdd(a, b, c) : a * b + c;

    /// <summary>Eight 16-bit values zero-extended to 32 bits (one <c>vpmovzxwd</c> from memory).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> Widen(ushort* p) => Avx2.IsSupported
        ? Avx2.ConvertToVector256Int32(p)
        : Vector256.WidenLower(Vector128.Load(p).ToVector256Unsafe()).AsInt32();

    [ThreadStatic] static float[]? t_scratch;

    /// <summary>A per-thread pinned f32 buffer of at least <paramref name="count"/> elements, kept for the thread's life.</summary>
    static float* Scratch(int count)
    {
        var s = t_scratch;
        if (s is null || s.Length < count) t_scratch = s = GC.AllocateUninitializedArray<float>(Math.Max(count, 4096), pinned: true);
        return (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(s));
    }

    /// <summary>Without 256-bit SIMD: one weight row at a time, converted into scratch, then TensorPrimitives' dot.</summary>
    static void Portable(in WeightMatrix w, float* x, int rows, float* y, int ldy, float* bias, int o0, int o1)
    {
        int n = w.Cols;
        float* row = w.Type == WeightType.F32 ? null : Scratch(n);
        for (int o = o0; o < o1; o++)
        {
            float* wr;
            if (w.Type == WeightType.F32) wr = (float*)w.Data + (long)o * n;
            else
            {
                var src = new ReadOnlySpan<ushort>((ushort*)w.Data + (long)o * n, n);
                if (w.Type == WeightType.BF16)
                    for (int i = 0; i < n; i++) row[i] = BitConverter.Int32BitsToSingle(src[i] << 16);
                else
                    TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<ushort, Half>(src), new Span<float>(row, n));
                wr = row;
            }
            var weights = new ReadOnlySpan<float>(wr, n);
            for (int r = 0; r < rows; r++)
            {
                float dot = TensorPrimitives.Dot(weights, new ReadOnlySpan<float>(x + (long)r * n, n));
                y[(long)r * ldy + o] = bias is null ? dot : dot + bias[o];
            }
        }
    }

    /// <summary>How a stored element type becomes f32, eight at a time and one at a time.</summary>
    interface IElement
    {
        static abstract int Size { get; }
        static abstract Vector256<float> Load8(byte* row, int i);
        static abstract Vector512<float> Load16(byte* row, int i);
        static abstract float Load1(byte* row, int i);
    }

    readonly struct F32 : IElement
    {
        public static int Size => 4;
        public static Vector256<float> Load8(byte* row, int i) => Vector256.Load((float*)row + i);
        public static Vector512<float> Load16(byte* row, int i) => Vector512.Load((float*)row + i);
        public static float Load1(byte* row, int i) => ((float*)row)[i];
    }

    /// <summary>A bf16 is the top half of an f32.</summary>
    readonly struct Bf16 : IElement
    {
        public static int Size => 2;
        public static Vector256<float> Load8(byte* row, int i) => Vector256.ShiftLeft(Widen((ushort*)row + i), 16).AsSingle();
        public static Vector512<float> Load16(byte* row, int i) =>
            Vector512.ShiftLeft(Avx512F.IsSupported
                ? Avx512F.ConvertToVector512Int32(Vector256.Load((ushort*)row + i))
                : Vector512.WidenLower(Vector256.Load((ushort*)row + i).ToVector512Unsafe()).AsInt32(), 16).AsSingle();
        public static float Load1(byte* row, int i) => BitConverter.Int32BitsToSingle(((ushort*)row)[i] << 16);
    }

    /// <summary>
    /// IEEE half to f32 with integer SIMD (.NET 10 exposes no F16C). Sign, exponent and mantissa are moved into f32
    /// position and the value is rescaled by 2^112; the product is exact for normals, and for subnormals too because
    /// they arrive as f32 denormals (the runtime never sets flush-to-zero). Inf and NaN, whose exponent the rescale
    /// would make finite, get the all-ones exponent back.
    /// </summary>
    readonly struct F16 : IElement
    {
        const float TwoTo112 = 5.192296858534828E+33f;   // 2^112 = 2^(127 - 15)

        public static int Size => 2;

        public static Vector256<float> Load8(byte* row, int i)
        {
            var h = Vector256.ShiftLeft(Widen((ushort*)row + i), 16);                           // sign at bit 31
            var bits = Vector256.ShiftRightArithmetic(h, 3) & Vector256.Create(unchecked((int)0x8FFFFFFF));
            var f = bits.AsSingle() * Vector256.Create(TwoTo112);
            var infNan = Vector256.GreaterThan(h & Vector256.Create(0x7FFF0000), Vector256.Create(0x7BFFFFFF));
            return (f.AsInt32() | (infNan & Vector256.Create(0x7F800000))).AsSingle();
        }

        public static Vector512<float> Load16(byte* row, int i) => Vector512.Create(Load8(row, i), Load8(row, i + 8));

        public static float Load1(byte* row, int i) => (float)((Half*)row)[i];
    }
}
