using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using PetalsSharp.Models.Quant;

namespace PetalsSharp.Models.Kernels;

// int8 weights against x rounded to int8 per 32-value block: Q8_0 · Q8_0, llama.cpp's decode product. The f32
// kernel converts every weight to float (three instructions per eight weights) and computed 6-9 G weights/s a core,
// under the memory's rate; here one vpdpbusd multiplies 32 pairs.
public static unsafe partial class MatRows
{
    /// <summary><paramref name="count"/> int8 blocks of four rows against quantized x; scales are d · dx. Calls nothing.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Int8IntBlocks(byte* w0, byte* w1, byte* w2, byte* w3, int count, sbyte* xq, byte* ax, float* scales, float* y, byte* next)
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        bool prefetch = QuantPrefetch && Sse.IsSupported;
        for (int b = 0; b < count; b++)
        {
            int off = b * BlockBytes;
            if (prefetch)
            {
                // The next tile's four rows are one contiguous run: 4 × 34 bytes of it per block keeps pace with this one.
                Sse.Prefetch0(next + 4 * off);
                Sse.Prefetch0(next + 4 * off + 64);
                Sse.Prefetch0(next + 4 * off + 128);
            }
            var q = Vector256.Load(xq + b * Int8Values);
            var a = Vector256.Load(ax + b * Int8Values);
            a0 = Int8IntBlock(w0 + off, q, a, scales + b, a0);
            a1 = Int8IntBlock(w1 + off, q, a, scales + ScaleChunk + b, a1);
            a2 = Int8IntBlock(w2 + off, q, a, scales + 2 * ScaleChunk + b, a2);
            a3 = Int8IntBlock(w3 + off, q, a, scales + 3 * ScaleChunk + b, a3);
        }
        y[0] += Vector256.Sum(a0);
        y[1] += Vector256.Sum(a1);
        y[2] += Vector256.Sum(a2);
        y[3] += Vector256.Sum(a3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Int8IntBlock(byte* block, Vector256<sbyte> xq, Vector256<byte> ax, float* scale, Vector256<float> acc)
    {
        var s = DotBytes(Vector256<int>.Zero, ax, Avx2.Sign(Vector256.Load((sbyte*)(block + 2)), xq));
        return Fmadd(Vector256.ConvertToSingle(s), Avx.BroadcastScalarToVector256(scale), acc);
    }
}
