using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using PetalsSharp.Models.Quant;

namespace PetalsSharp.Models.Kernels;

// One activation row against four block-quantized weight rows, dequantized in registers. Each block's products are
// summed in f32 without its scale, then folded into the row's accumulator with one FMA by the scale; no weight is
// materialised in memory. The scales of up to 64 blocks of the tile are converted first (TileScales), so the
// kernels call nothing and the JIT keeps their accumulators in registers (a call in the loop, even on a rare path,
// made it home them on the stack and halved the speed).
public static unsafe partial class MatRows
{
    const int Int8Values = 32, Nf4Values = 64, BlockBytes = QuantFormats.BlockBytes;

    /// <summary>Blocks whose scales are converted ahead of the kernel at a time (a 1 KiB stack buffer for a tile).</summary>
    const int ScaleChunk = 64;

    /// <summary>Whether the 1-row quantized kernels prefetch the next tile (a benchmark switch: <c>matrows --qprefetch</c>).</summary>
    public static bool QuantPrefetch { get; set; } = true;

    /// <summary>Int8 rows <paramref name="w0"/>..<paramref name="w3"/> against <paramref name="x"/> (<paramref name="n"/> values): <c>y[0..4)</c>, no bias.</summary>
    static void Int8Tile1(byte* w0, byte* w1, byte* w2, byte* w3, int n, float* x, float* y, byte* next)
    {
        float* scales = stackalloc float[Tile * ScaleChunk];
        y[0] = y[1] = y[2] = y[3] = 0;
        int full = n / Int8Values;
        for (int c = 0; c < full; c += ScaleChunk)
        {
            int count = Math.Min(ScaleChunk, full - c), off = c * BlockBytes;
            TileScales(w0 + off, w1 + off, w2 + off, w3 + off, count, scales, 1);
            Int8Blocks(w0 + off, w1 + off, w2 + off, w3 + off, count, x + c * Int8Values, scales, y, next + Tile * off);
        }
        int rest = n - full * Int8Values;
        if (rest > 0)
        {
            // The last block's padding weights are zero, but x ends at n: its tail is a zero-padded copy.
            float* xt = stackalloc float[Int8Values];
            new ReadOnlySpan<float>(x + full * Int8Values, rest).CopyTo(new Span<float>(xt, rest));
            int off = full * BlockBytes;
            TileScales(w0 + off, w1 + off, w2 + off, w3 + off, 1, scales, 1);
            Int8Blocks(w0 + off, w1 + off, w2 + off, w3 + off, 1, xt, scales, y, next);
        }
    }

    /// <summary>
    /// <paramref name="count"/> whole int8 blocks of four rows, with their scales in <paramref name="scales"/>
    /// (<c>[Tile, ScaleChunk]</c>), added into <c>y[0..4)</c>. Calls nothing, so the accumulators stay in registers.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Int8Blocks(byte* w0, byte* w1, byte* w2, byte* w3, int count, float* x, float* scales, float* y, byte* next)
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        bool prefetch = QuantPrefetch && Sse.IsSupported;
        for (int b = 0; b < count; b++)
        {
            int off = b * BlockBytes;
            if (prefetch)
            {
                // The next tile's four rows are contiguous: 4 blocks' worth of it per block of this one.
                Sse.Prefetch0(next + 4 * off);
                Sse.Prefetch0(next + 4 * off + 64);
                Sse.Prefetch0(next + 4 * off + 128);
            }
            float* xb = x + b * Int8Values;
            var x0 = Vector256.Load(xb);
            var x1 = Vector256.Load(xb + 8);
            var x2 = Vector256.Load(xb + 16);
            var x3 = Vector256.Load(xb + 24);
            a0 = Int8Block(w0 + off, x0, x1, x2, x3, scales + b, a0);
            a1 = Int8Block(w1 + off, x0, x1, x2, x3, scales + ScaleChunk + b, a1);
            a2 = Int8Block(w2 + off, x0, x1, x2, x3, scales + 2 * ScaleChunk + b, a2);
            a3 = Int8Block(w3 + off, x0, x1, x2, x3, scales + 3 * ScaleChunk + b, a3);
        }
        y[0] += Vector256.Sum(a0);
        y[1] += Vector256.Sum(a1);
        y[2] += Vector256.Sum(a2);
        y[3] += Vector256.Sum(a3);
    }

    /// <summary><paramref name="acc"/> + d · Σ q·x over one int8 block: four sign-extending loads (vpmovsxbd), converts and FMAs.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Int8Block(byte* block, Vector256<float> x0, Vector256<float> x1, Vector256<float> x2, Vector256<float> x3, float* d, Vector256<float> acc)
    {
        var q = (sbyte*)(block + 2);
        var s = Vector256.ConvertToSingle(Avx2.ConvertToVector256Int32(q)) * x0;
        s = Fmadd(Vector256.ConvertToSingle(Avx2.ConvertToVector256Int32(q + 8)), x1, s);
        s = Fmadd(Vector256.ConvertToSingle(Avx2.ConvertToVector256Int32(q + 16)), x2, s);
        s = Fmadd(Vector256.ConvertToSingle(Avx2.ConvertToVector256Int32(q + 24)), x3, s);
        return Fmadd(s, Avx.BroadcastScalarToVector256(d), acc);   // a load, not a shuffle
    }

    // Nf4 in registers. One byte shuffle (vpshufb) looks up 32 codes; a second one moves four of them into the top
    // byte of each 32-bit lane (zeroing the rest), so the lane holds code · 2^24 and converts to f32 exactly with no
    // sign extension; the 2^-24 goes into the scale. Within each 128-bit half the second shuffle takes codes 4k..4k+3,
    // so the eight vectors of a block hold values in a fixed permuted order, and x is permuted the same way once per
    // call (Nf4Activations) instead of per row.

    const float TwoToMinus24 = 5.9604645E-08f;

    /// <summary>Nf4 rows against <paramref name="xr"/> (<see cref="Nf4Activations"/>): <c>y[0..4)</c>, no bias.</summary>
    static void Nf4Tile1(byte* w0, byte* w1, byte* w2, byte* w3, int blocks, float* xr, float* y, byte* next)
    {
        float* scales = stackalloc float[Tile * ScaleChunk];
        y[0] = y[1] = y[2] = y[3] = 0;
        for (int c = 0; c < blocks; c += ScaleChunk)
        {
            int count = Math.Min(ScaleChunk, blocks - c), off = c * BlockBytes;
            TileScales(w0 + off, w1 + off, w2 + off, w3 + off, count, scales, TwoToMinus24);
            Nf4Blocks(w0 + off, w1 + off, w2 + off, w3 + off, count, xr + c * Nf4Values, scales, y, next + Tile * off);
        }
    }

    /// <summary>As <see cref="Int8Blocks"/>, for Nf4 blocks (scales times 2^-24).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Nf4Blocks(byte* w0, byte* w1, byte* w2, byte* w3, int count, float* xr, float* scales, float* y, byte* next)
    {
        var table = Vector256.Create(Vector128.Create(BlockQuant.Nf4Codes));
        var low = Vector256.Create((byte)0x0F);
        Vector256<sbyte> p0 = Placement(0), p1 = Placement(1), p2 = Placement(2), p3 = Placement(3);
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        bool prefetch = QuantPrefetch && Sse.IsSupported;
        for (int b = 0; b < count; b++)
        {
            int off = b * BlockBytes;
            if (prefetch)
            {
                Sse.Prefetch0(next + 4 * off);
                Sse.Prefetch0(next + 4 * off + 64);
                Sse.Prefetch0(next + 4 * off + 128);
            }
            float* xb = xr + b * Nf4Values;
            a0 = Nf4Block(w0 + off, xb, table, low, p0, p1, p2, p3, scales + b, a0);
            a1 = Nf4Block(w1 + off, xb, table, low, p0, p1, p2, p3, scales + ScaleChunk + b, a1);
            a2 = Nf4Block(w2 + off, xb, table, low, p0, p1, p2, p3, scales + 2 * ScaleChunk + b, a2);
            a3 = Nf4Block(w3 + off, xb, table, low, p0, p1, p2, p3, scales + 3 * ScaleChunk + b, a3);
        }
        y[0] += Vector256.Sum(a0);
        y[1] += Vector256.Sum(a1);
        y[2] += Vector256.Sum(a2);
        y[3] += Vector256.Sum(a3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Nf4Block(byte* block, float* xb, Vector256<sbyte> table, Vector256<byte> low,
        Vector256<sbyte> p0, Vector256<sbyte> p1, Vector256<sbyte> p2, Vector256<sbyte> p3, float* d, Vector256<float> acc)
    {
        var bytes = Vector256.Load(block + 2);
        var lo = Avx2.Shuffle(table, (bytes & low).AsSByte());                                                  // codes of values 0..31
        var hi = Avx2.Shuffle(table, (Avx2.ShiftRightLogical(bytes.AsUInt16(), 4).AsByte() & low).AsSByte());   // values 32..63
        var s = Code(lo, p0) * Vector256.Load(xb);
        s = Fmadd(Code(lo, p1), Vector256.Load(xb + 8), s);
        s = Fmadd(Code(lo, p2), Vector256.Load(xb + 16), s);
        s = Fmadd(Code(lo, p3), Vector256.Load(xb + 24), s);
        s = Fmadd(Code(hi, p0), Vector256.Load(xb + 32), s);
        s = Fmadd(Code(hi, p1), Vector256.Load(xb + 40), s);
        s = Fmadd(Code(hi, p2), Vector256.Load(xb + 48), s);
        s = Fmadd(Code(hi, p3), Vector256.Load(xb + 56), s);
        return Fmadd(s, Avx.BroadcastScalarToVector256(d), acc);   // a load, not a shuffle
    }

    /// <summary>Codes 4k..4k+3 of each 128-bit half, each in the top byte of its 32-bit lane, as f32 (code · 2^24).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Code(Vector256<sbyte> codes, Vector256<sbyte> placement) =>
        Vector256.ConvertToSingle(Avx2.Shuffle(codes, placement).AsInt32());

    /// <summary>The shuffle control putting byte 4k + j of each 128-bit half at the top of lane j (other bytes zeroed).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<sbyte> Placement(int k)
    {
        int lane = unchecked((int)0x00808080);
        var v = Vector128.Create(lane | 4 * k << 24, lane | (4 * k + 1) << 24, lane | (4 * k + 2) << 24, lane | (4 * k + 3) << 24);
        return Vector256.Create(v, v).AsSByte();
    }

    /// <summary>
    /// x (<paramref name="n"/> values) permuted into the lane order of <see cref="Nf4Block"/> and zero-padded to whole
    /// blocks: vector v = 4h + k of a block holds values 32h + 4k + j (lanes j = 0..3) and 32h + 16 + 4k + j (lanes 4..7).
    /// </summary>
    static float* Nf4Activations(float* x, int n, int blocks)
    {
        float* xr = Scratch(blocks * Nf4Values);
        for (int b = 0; b < blocks; b++)
            for (int v = 0; v < 8; v++)
                for (int lane = 0; lane < 8; lane++)
                {
                    int i = b * Nf4Values + 32 * (v >> 2) + 4 * (v & 3) + (lane < 4 ? lane : 12 + lane);
                    xr[b * Nf4Values + 8 * v + lane] = i < n ? x[i] : 0;
                }
        return xr;
    }
}
