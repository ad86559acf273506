using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using PetalsSharp.Models.Quant;

namespace PetalsSharp.Models.Kernels;

// One activation row in the integer domain (llama.cpp's way): x is quantized once per call to int8 per weight
// block (scale dx = absmax / 127), and each block's dot product is int8 · int8 summed in int32, then scaled by
// d · dx. A byte multiply-add needs one unsigned operand, so |xq| is the unsigned side and the weight takes xq's
// sign (vpsignb). With AVX-VNNI one vpdpbusd does 32 products; without, vpmaddubsw + vpmaddwd (no saturation:
// |xq| ≤ 127 and |q| ≤ 127, so a pair sums to at most 32258).
// With AVX-VNNI the weights are the unsigned side instead (q + 128 from the table) and each block's sums start at
// −128 · Σ xq: the same integers without the two vpsignb per block (12 → 10 vector ops per row and block).
// This is not the dequantized product: x's rounding adds at most dx/2 · Σ|w| per block (MatRowsQuantTests states
// the bound). It costs about a third of the f32 kernel's instructions per block, which is what lets nf4 stream.
public static unsafe partial class MatRows
{
    /// <summary>
    /// Whether 1-row products against nf4 weights quantize x to int8 and take integer dot products (within
    /// dx/2 · Σ|w| per block of the dequantized product, as llama.cpp's Q4_0 · Q8_0), else the f32 kernel (exact up to
    /// summation order). On by default: with two threads the f32 kernel computed nf4 at 0.51 of the bandwidth and
    /// decoded the 100M model at 103 tok/s, the integer one at 0.76 and 138 tok/s in the same minutes (later runs:
    /// docs/benchmarks.md).
    /// <c>PETALS_QUANT_INT=0</c> or a matrix's <see cref="WeightMatrix.ExactActivations"/> turns it off.
    /// </summary>
    public static bool QuantIntegerDot { get; set; } = Environment.GetEnvironmentVariable("PETALS_QUANT_INT") != "0";

    /// <summary>
    /// x (<paramref name="n"/> values) as int8 blocks of <paramref name="per"/> (32 or 64): <c>xq</c> and <c>|xq|</c>
    /// (<c>blocks · per</c> bytes each, zero-padded) and each block's scale <c>dx</c>. Saturation never bites: the
    /// largest |x| maps to 127 up to f32 rounding.
    /// </summary>
    static void QuantizeActivations(float* x, int n, int per, int blocks, sbyte* xq, byte* ax, float* dx, bool offset = false)
    {
        float* padded = stackalloc float[Nf4Values];
        for (int b = 0; b < blocks; b++)
        {
            int start = b * per, count = Math.Min(per, n - start);
            float* v = x + start;
            if (count < per)
            {
                new ReadOnlySpan<float>(v, count).CopyTo(new Span<float>(padded, per));
                new Span<float>(padded + count, per - count).Clear();
                v = padded;
            }
            var m = Vector256<float>.Zero;
            for (int i = 0; i < per; i += 8) m = Vector256.Max(m, Vector256.Abs(Vector256.Load(v + i)));
            var m4 = Vector128.Max(m.GetLower(), m.GetUpper());
            float amax = Math.Max(Math.Max(m4[0], m4[1]), Math.Max(m4[2], m4[3]));
            dx[b] = amax / 127;
            var inv = Vector256.Create(amax == 0 ? 0 : 127 / amax);
            for (int i = 0; i < per; i += 32)
            {
                // Round to nearest even (vcvtps2dq), then pack 4 × 8 int32 into 32 int8; the packs work per 128-bit
                // half, so the dwords come out as 0,4,1,5,2,6,3,7 and one permute puts them back.
                var i01 = Avx2.PackSignedSaturate(Avx.ConvertToVector256Int32(Vector256.Load(v + i) * inv), Avx.ConvertToVector256Int32(Vector256.Load(v + i + 8) * inv));
                var i23 = Avx2.PackSignedSaturate(Avx.ConvertToVector256Int32(Vector256.Load(v + i + 16) * inv), Avx.ConvertToVector256Int32(Vector256.Load(v + i + 24) * inv));
                var q = Avx2.PermuteVar8x32(Avx2.PackSignedSaturate(i01, i23).AsInt32(), Vector256.Create(0, 4, 1, 5, 2, 6, 3, 7)).AsSByte();
                q.Store(xq + start + i);
                if (!offset) Avx2.Abs(q).Store(ax + start + i);
            }
            if (offset)
            {
                // −128 · the sum of the xq each lane of Nf4IntBlockOffset's dot products meets (bytes 4k..4k+3 of both halves).
                var u = Vector256.Create((byte)128);
                var sum = AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, u, Vector256.Load(xq + start));
                (-AvxVnni.MultiplyWideningAndAdd(sum, u, Vector256.Load(xq + start + 32))).Store((int*)(ax + start));
            }
        }
    }

    /// <summary>The block kernel of one integer-domain format, for <see cref="IntRange{T}"/>.</summary>
    interface IIntBlocks
    {
        /// <summary>Input values per block (x is quantized in blocks of as many).</summary>
        static abstract int Values { get; }

        /// <summary>Whether <c>ax</c> holds each block's −128 · Σxq correction (the VNNI nf4 kernel) instead of |xq|.</summary>
        static abstract bool Offset { get; }

        static abstract void Blocks(byte* w0, byte* w1, byte* w2, byte* w3, int count, sbyte* xq, byte* ax, float* scales, float* y, byte* next);
    }

    readonly struct Int8Dot : IIntBlocks
    {
        public static int Values => Int8Values;
        public static bool Offset => false;
        public static void Blocks(byte* w0, byte* w1, byte* w2, byte* w3, int count, sbyte* xq, byte* ax, float* scales, float* y, byte* next) =>
            Int8IntBlocks(w0, w1, w2, w3, count, xq, ax, scales, y, next);
    }

    readonly struct Nf4Dot : IIntBlocks
    {
        public static int Values => Nf4Values;
        public static bool Offset => false;
        public static void Blocks(byte* w0, byte* w1, byte* w2, byte* w3, int count, sbyte* xq, byte* ax, float* scales, float* y, byte* next) =>
            Nf4IntBlocks(w0, w1, w2, w3, count, xq, ax, scales, y, next);
    }

    readonly struct Nf4OffsetDot : IIntBlocks
    {
        public static int Values => Nf4Values;
        public static bool Offset => true;
        public static void Blocks(byte* w0, byte* w1, byte* w2, byte* w3, int count, sbyte* xq, byte* ax, float* scales, float* y, byte* next) =>
            Nf4IntBlocksOffset(w0, w1, w2, w3, count, xq, (int*)ax, scales, y, next);
    }

    /// <summary>One activation row against int8 or nf4 weights in the integer domain: tiles of four rows, as QuantRange1.</summary>
    static void IntRange(in WeightMatrix w, float* x, float* y, float* bias, int o0, int o1)
    {
        if (w.Type == WeightType.Int8) IntRange<Int8Dot>(w, x, y, bias, o0, o1);
        else if (AvxVnni.IsSupported) IntRange<Nf4OffsetDot>(w, x, y, bias, o0, o1);
        else IntRange<Nf4Dot>(w, x, y, bias, o0, o1);
    }

    static void IntRange<T>(in WeightMatrix w, float* x, float* y, float* bias, int o0, int o1) where T : struct, IIntBlocks
    {
        int n = w.Cols, blocks = w.Quant.Blocks(n), per = T.Values;
        long rowBytes = w.RowBytes;
        var data = (byte*)w.Data;
        var buffer = (byte*)Scratch(blocks * (2 * per + 4) / 4);
        sbyte* xq = (sbyte*)buffer;                 // [blocks * per]
        byte* ax = buffer + blocks * per;           // [blocks * per]: |xq|, or with Offset each block's Vector256<int> correction
        float* dx = (float*)(ax + blocks * per);    // [blocks]
        QuantizeActivations(x, n, per, blocks, xq, ax, dx, T.Offset);
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
                if (w.Scales is null) TileScales(w0 + off, w1 + off, w2 + off, w3 + off, chunk, scales, 1, dx + c);
                else SideScales(w.Scales + (long)o * blocks + c, blocks, count, chunk, scales, dx + c);
                T.Blocks(w0 + off, w1 + off, w2 + off, w3 + off, chunk, xq + c * per, ax + c * per, scales, part, w0 + Tile * (rowBytes + off));
            }
            for (int k = 0; k < count; k++) y[o + k] = part[k] + (bias is null ? 0 : bias[o + k]);
        }
    }

    /// <summary>
    /// As <see cref="TileScales"/> from the f32 scales beside the matrix (<see cref="WeightMatrix.Scales"/>, row stride
    /// <paramref name="stride"/>): d · dx for <paramref name="chunk"/> blocks of <paramref name="rows"/> rows, the
    /// missing rows of a short last tile repeating the last one (as the kernels' row pointers do).
    /// </summary>
    static void SideScales(float* side, int stride, int rows, int chunk, float* scales, float* dx)
    {
        for (int k = 0; k < Tile; k++)
        {
            float* src = side + (long)Math.Min(k, rows - 1) * stride;
            float* dst = scales + k * ScaleChunk;
            int b = 0;
            for (; b + 8 <= chunk; b += 8) (Vector256.Load(src + b) * Vector256.Load(dx + b)).Store(dst + b);
            for (; b < chunk; b++) dst[b] = src[b] * dx[b];
        }
    }

    /// <summary><paramref name="count"/> nf4 blocks of four rows against quantized x; scales are d · dx. Calls nothing.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Nf4IntBlocks(byte* w0, byte* w1, byte* w2, byte* w3, int count, sbyte* xq, byte* ax, float* scales, float* y, byte* next)
    {
        var table = Vector256.Create(Vector128.Create(BlockQuant.Nf4Codes));
        var low = Vector256.Create((byte)0x0F);
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
            var qlo = Vector256.Load(xq + b * Nf4Values);
            var qhi = Vector256.Load(xq + b * Nf4Values + 32);
            var alo = Vector256.Load(ax + b * Nf4Values);
            var ahi = Vector256.Load(ax + b * Nf4Values + 32);
            a0 = Nf4IntBlock(w0 + off, table, low, qlo, qhi, alo, ahi, scales + b, a0);
            a1 = Nf4IntBlock(w1 + off, table, low, qlo, qhi, alo, ahi, scales + ScaleChunk + b, a1);
            a2 = Nf4IntBlock(w2 + off, table, low, qlo, qhi, alo, ahi, scales + 2 * ScaleChunk + b, a2);
            a3 = Nf4IntBlock(w3 + off, table, low, qlo, qhi, alo, ahi, scales + 3 * ScaleChunk + b, a3);
        }
        y[0] += Vector256.Sum(a0);
        y[1] += Vector256.Sum(a1);
        y[2] += Vector256.Sum(a2);
        y[3] += Vector256.Sum(a3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Nf4IntBlock(byte* block, Vector256<sbyte> table, Vector256<byte> low, Vector256<sbyte> qlo, Vector256<sbyte> qhi,
        Vector256<byte> alo, Vector256<byte> ahi, float* scale, Vector256<float> acc)
    {
        var bytes = Vector256.Load(block + 2);
        var lo = Avx2.Shuffle(table, (bytes & low).AsSByte());                                                  // codes of values 0..31
        var hi = Avx2.Shuffle(table, (Avx2.ShiftRightLogical(bytes.AsUInt16(), 4).AsByte() & low).AsSByte());   // values 32..63
        var s = DotBytes(Vector256<int>.Zero, alo, Avx2.Sign(lo, qlo));
        s = DotBytes(s, ahi, Avx2.Sign(hi, qhi));
        return Fmadd(Vector256.ConvertToSingle(s), Avx.BroadcastScalarToVector256(scale), acc);
    }

    /// <summary><paramref name="acc"/> + sums of four adjacent u8 · s8 products per 32-bit lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> DotBytes(Vector256<int> acc, Vector256<byte> u, Vector256<sbyte> s) => AvxVnni.IsSupported
        ? AvxVnni.MultiplyWideningAndAdd(acc, u, s)
        : acc + Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), Vector256.Create((short)1));

    /// <summary>
    /// As <see cref="Nf4IntBlocks"/> with AVX-VNNI, but the weights are the unsigned side: the table holds q + 128 (1..255)
    /// and each block's int32 sums start from <paramref name="corr"/> (<c>[count, 16]</c> ints, the first 8 used:
    /// −128 · Σ xq per lane), so each lane ends at exactly Σ q · xq as before, without the two vpsignb per block.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Nf4IntBlocksOffset(byte* w0, byte* w1, byte* w2, byte* w3, int count, sbyte* xq, int* corr, float* scales, float* y, byte* next)
    {
        var table = Vector256.Create(Vector128.Create(BlockQuant.Nf4Codes).AsByte() + Vector128.Create((byte)128));
        var low = Vector256.Create((byte)0x0F);
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
            var qlo = Vector256.Load(xq + b * Nf4Values);
            var qhi = Vector256.Load(xq + b * Nf4Values + 32);
            var c = Vector256.Load(corr + b * (Nf4Values / 4));
            a0 = Nf4IntBlockOffset(w0 + off, table, low, qlo, qhi, c, scales + b, a0);
            a1 = Nf4IntBlockOffset(w1 + off, table, low, qlo, qhi, c, scales + ScaleChunk + b, a1);
            a2 = Nf4IntBlockOffset(w2 + off, table, low, qlo, qhi, c, scales + 2 * ScaleChunk + b, a2);
            a3 = Nf4IntBlockOffset(w3 + off, table, low, qlo, qhi, c, scales + 3 * ScaleChunk + b, a3);
        }
        AddSums(y, a0, a1, a2, a3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Nf4IntBlockOffset(byte* block, Vector256<byte> table, Vector256<byte> low, Vector256<sbyte> qlo, Vector256<sbyte> qhi,
        Vector256<int> corr, float* scale, Vector256<float> acc)
    {
        var bytes = Vector256.Load(block + 2);
        var lo = Avx2.Shuffle(table, bytes & low);                                                  // q + 128 of values 0..31
        var hi = Avx2.Shuffle(table, Avx2.ShiftRightLogical(bytes.AsUInt16(), 4).AsByte() & low);   // values 32..63
        var s = AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(corr, lo, qlo), hi, qhi);
        return Fmadd(Vector256.ConvertToSingle(s), Avx.BroadcastScalarToVector256(scale), acc);
    }

    /// <summary><c>y[0..4) +=</c> the lane sums of <paramref name="a0"/>..<paramref name="a3"/>, with one reduction for all four.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void AddSums(float* y, Vector256<float> a0, Vector256<float> a1, Vector256<float> a2, Vector256<float> a3)
    {
        var h = Avx.HorizontalAdd(Avx.HorizontalAdd(a0, a1), Avx.HorizontalAdd(a2, a3));   // per 128-bit half: partial sums of rows 0..3
        (Vector128.Load(y) + h.GetLower() + h.GetUpper()).Store(y);
    }
}
