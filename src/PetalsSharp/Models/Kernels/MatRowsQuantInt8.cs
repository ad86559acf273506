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
    /// <summary>One activation row against int8 weights in the integer domain: tiles of four rows.</summary>
    static void Int8IntRange(in WeightMatrix w, float* x, float* y, float* bias, int o0, int o1)
    {
        int n = w.Cols, blocks = w.Quant.Blocks(n);
        long rowBytes = w.RowBytes;
        var data = (byte*)w.Data;
        var buffer = (byte*)Scratch(blocks * (2 * Int8Values + 4) / 4);
        sbyte* xq = (sbyte*)buffer;                          // [blocks * 32]
        byte* ax = buffer + blocks * Int8Values;             // [blocks * 32]
        float* dx = (float*)(ax + blocks * Int8Values);      // [blocks]
        QuantizeActivations(x, n, Int8Values, blocks, xq, ax, dx);
        float* scales = stackalloc float[Tile * ScaleChunk];
        float* part = stackalloc float[Tile];
        for (int o = o0; o < o1; o += Tile)
        {
            int count = Math.Min(Tile, o1 - o);
            byte* w0 = data + o * rowBytes;
            byte* w1 = count > 1 ? w0 + rowBytes : w0, w2 = count > 2 ? w0 + 2 * rowBytes : w1, w3 = count > 3 ? w0 + 3 * rowBytes : w2;
            part[0] = part[1] = part[2] = part[3] = 0;
            for (int c = 0; c < blocks; c += ScaleChunk)
            {
                int chunk = Math.Min(ScaleChunk, blocks - c), off = c * BlockBytes;
                TileScales(w0 + off, w1 + off, w2 + off, w3 + off, chunk, scales, 1, dx + c);
                Int8IntBlocks(w0 + off, w1 + off, w2 + off, w3 + off, chunk, xq + c * Int8Values, ax + c * Int8Values, scales, part,
                    w0 + Tile * (rowBytes + off));
            }
            for (int k = 0; k < count; k++) y[o + k] = part[k] + (bias is null ? 0 : bias[o + k]);
        }
    }

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
