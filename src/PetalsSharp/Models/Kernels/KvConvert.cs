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
