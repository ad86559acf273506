using System.Numerics.Tensors;
using System.Runtime.Intrinsics;

namespace PetalsSharp.Models.Kernels;

/// <summary>
/// One head's <c>[D]</c> KV slice in its storage format, read and written as float32. bfloat16 widens by a 16-bit
/// shift (exact) and narrows by round-to-nearest-even, as libtorch's <c>to(bfloat16)</c> does; float16 uses .NET's
/// <see cref="Half"/> conversions, also round-to-nearest-even. So a cache written by either path holds the same bits.
/// </summary>
public static unsafe class KvConvert
{
    /// <summary>float32 → bfloat16, round to nearest even; NaN stays a quiet NaN.</summary>
    public static ushort ToBFloat16(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if (float.IsNaN(f)) return 0x7FC0;
        return (ushort)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
    }

    public static void Store(float* src, byte* dst, int d, KvKind kind)
    {
        switch (kind)
        {
            case KvKind.Float32:
                new ReadOnlySpan<float>(src, d).CopyTo(new Span<float>(dst, d));
                break;
            case KvKind.BFloat16:
                for (int i = 0; i < d; i++) ((ushort*)dst)[i] = ToBFloat16(src[i]);
                break;
            default:
                TensorPrimitives.ConvertToHalf(new ReadOnlySpan<float>(src, d), new Span<Half>(dst, d));
                break;
        }
    }

    /// <summary>Widens <paramref name="d"/> stored elements into <paramref name="dst"/>.</summary>
    public static void Load(byte* src, float* dst, int d, KvKind kind)
    {
        switch (kind)
        {
            case KvKind.Float32:
                new ReadOnlySpan<float>(src, d).CopyTo(new Span<float>(dst, d));
                break;
            case KvKind.BFloat16:
                int i = 0;
                if (Vector256.IsHardwareAccelerated)
                    for (; i + 8 <= d; i += 8)
                    {
                        var half = Vector128.Load((ushort*)src + i);                       // 8 × bf16
                        var wide = Vector256.Create(Vector128.WidenLower(half), Vector128.WidenUpper(half));
                        Vector256.ShiftLeft(wide, 16).AsSingle().Store(dst + i);
                    }
                for (; i < d; i++) dst[i] = BitConverter.UInt32BitsToSingle((uint)((ushort*)src)[i] << 16);
                break;
            default:
                TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(src, d), new Span<float>(dst, d));
                break;
        }
    }

    /// <summary>Head dims up to this widen on the stack; larger ones take the slow scalar path.</summary>
    const int StackFloats = 512;

    public static float Dot(float* q, byte* k, int d, KvKind kind)
    {
        if (Vector512.IsHardwareAccelerated && (d & 15) == 0 && kind != KvKind.Float16)
        {
            var acc = Vector512<float>.Zero;
            for (int i = 0; i < d; i += 16) acc = Vector512.FusedMultiplyAdd(Vector512.Load(q + i), Wide16(k, i, kind), acc);
            return Vector512.Sum(acc);
        }
        if (Vector256.IsHardwareAccelerated && (d & 7) == 0 && kind != KvKind.Float16)
        {
            var acc = Vector256<float>.Zero;
            for (int i = 0; i < d; i += 8) acc = Vector256.FusedMultiplyAdd(Vector256.Load(q + i), Wide8(k, i, kind), acc);
            return Vector256.Sum(acc);
        }
        if (kind == KvKind.Float32) return TensorPrimitives.Dot(new ReadOnlySpan<float>(q, d), new ReadOnlySpan<float>(k, d));
        if (d > StackFloats) return SlowDot(q, k, d, kind);
        float* wide = stackalloc float[d];
        Load(k, wide, d, kind);
        return TensorPrimitives.Dot(new ReadOnlySpan<float>(q, d), new ReadOnlySpan<float>(wide, d));
    }

    public static void MultiplyAdd(byte* v, float p, float* acc, int d, KvKind kind)
    {
        var output = new Span<float>(acc, d);
        if (kind == KvKind.Float32)
        {
            TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(v, d), p, output, output);
            return;
        }
        if (d > StackFloats)
        {
            for (int i = 0; i < d; i++) acc[i] += p * Element(v, i, kind);
            return;
        }
        float* wide = stackalloc float[d];
        Load(v, wide, d, kind);
        TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(wide, d), p, output, output);
    }

    /// <summary>
    /// <c>acc [d] += Σ p[j] · v_j</c> for <paramref name="count"/> values <paramref name="stride"/> bytes apart. For the
    /// usual head sizes the accumulator stays in registers across the whole run.
    /// </summary>
    public static void MultiplyAddRun(byte* v, long stride, float* p, int count, float* acc, int d, KvKind kind)
    {
        if (Vector512.IsHardwareAccelerated && kind != KvKind.Float16 && (d == 64 || d == 128))
        {
            for (int c = 0; c < d; c += 64)
            {
                var a0 = Vector512.Load(acc + c);
                var a1 = Vector512.Load(acc + c + 16);
                var a2 = Vector512.Load(acc + c + 32);
                var a3 = Vector512.Load(acc + c + 48);
                byte* x = v;
                for (int j = 0; j < count; j++, x += stride)
                {
                    if (p[j] == 0f) continue;
                    var w = Vector512.Create(p[j]);
                    a0 = Vector512.FusedMultiplyAdd(Wide16(x, c, kind), w, a0);
                    a1 = Vector512.FusedMultiplyAdd(Wide16(x, c + 16, kind), w, a1);
                    a2 = Vector512.FusedMultiplyAdd(Wide16(x, c + 32, kind), w, a2);
                    a3 = Vector512.FusedMultiplyAdd(Wide16(x, c + 48, kind), w, a3);
                }
                a0.Store(acc + c);
                a1.Store(acc + c + 16);
                a2.Store(acc + c + 32);
                a3.Store(acc + c + 48);
            }
            return;
        }
        for (int j = 0; j < count; j++, v += stride)
            if (p[j] != 0f) MultiplyAdd(v, p[j], acc, d, kind);
    }

    /// <summary>16 stored elements from element <paramref name="i"/> as float32 (float32 or bfloat16 storage).</summary>
    static Vector512<float> Wide16(byte* k, int i, KvKind kind) => kind == KvKind.Float32
        ? Vector512.Load((float*)k + i)
        : Vector512.ShiftLeft(Vector512.Create(Vector256.WidenLower(Vector256.Load((ushort*)k + i)),
            Vector256.WidenUpper(Vector256.Load((ushort*)k + i))), 16).AsSingle();

    /// <summary>8 stored elements from element <paramref name="i"/> as float32 (float32 or bfloat16 storage).</summary>
    static Vector256<float> Wide8(byte* k, int i, KvKind kind) => kind == KvKind.Float32
        ? Vector256.Load((float*)k + i)
        : Vector256.ShiftLeft(Vector256.Create(Vector128.WidenLower(Vector128.Load((ushort*)k + i)),
            Vector128.WidenUpper(Vector128.Load((ushort*)k + i))), 16).AsSingle();

    static float SlowDot(float* q, byte* k, int d, KvKind kind)
    {
        float sum = 0;
        for (int i = 0; i < d; i++) sum += q[i] * Element(k, i, kind);
        return sum;
    }

    static float Element(byte* p, int i, KvKind kind) => kind == KvKind.BFloat16
        ? BitConverter.UInt32BitsToSingle((uint)((ushort*)p)[i] << 16)
        : (float)((Half*)p)[i];
}
