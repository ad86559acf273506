using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using PetalsSharp.Models.Quant;

namespace PetalsSharp.Models.Kernels;

// Products against block-quantized weights (Quant.QuantFormat), pinned to BlockQuant.Dequantize: every path
// computes Σᵢ x[i] · d · q[i] in f32, only the order of the additions differs.
// - One activation row (decode): tiles of four weight rows dequantized in registers (MatRowsQuantTiles.cs).
// - Several rows: each tile is dequantized once into the per-thread f32 scratch and reused by the f32 tiles, as
//   16-bit weights are.
// - Without AVX2: the portable path dequantizes a row into scratch and uses TensorPrimitives' dot.
public static unsafe partial class MatRows
{
    static void QuantRange(in WeightMatrix w, float* x, int rows, float* y, int ldy, float* bias, int o0, int o1)
    {
        if (!Avx2.IsSupported) QuantPortable(w, x, rows, y, ldy, bias, o0, o1);
        else if (rows == 1 && QuantIntegerDot && !w.ExactActivations) IntRange(w, x, y, bias, o0, o1);
        else if (rows == 1) QuantRange1(w, x, y, bias, o0, o1);
        else QuantTiles(w, x, rows, y, ldy, bias, o0, o1);
    }

    /// <summary>One activation row: tiles of four weight rows; a last partial tile repeats its last row into a throwaway result.</summary>
    static void QuantRange1(in WeightMatrix w, float* x, float* y, float* bias, int o0, int o1)
    {
        int n = w.Cols, blocks = w.Quant.Blocks(n);
        long rowBytes = w.RowBytes;
        var data = (byte*)w.Data;
        bool nf4 = w.Type == WeightType.Nf4;
        float* xr = nf4 ? Nf4Activations(x, n, blocks) : null;   // [blocks * 64], in the kernel's lane order
        float* part = stackalloc float[Tile];
        for (int o = o0; o < o1; o += Tile)
        {
            int count = Math.Min(Tile, o1 - o);
            byte* w0 = data + o * rowBytes;
            byte* w1 = count > 1 ? w0 + rowBytes : w0, w2 = count > 2 ? w0 + 2 * rowBytes : w1, w3 = count > 3 ? w0 + 3 * rowBytes : w2;
            float* dst = count == Tile ? y + o : part;
            if (nf4) Nf4Tile1(w0, w1, w2, w3, blocks, xr, dst, w0 + Tile * rowBytes);
            else Int8Tile1(w0, w1, w2, w3, n, x, dst, w0 + Tile * rowBytes);
            for (int k = 0; k < count; k++) y[o + k] = dst[k] + (bias is null ? 0 : bias[o + k]);
        }
    }

    /// <summary>Several activation rows: a four-row tile dequantized once into f32 scratch, then the f32 tiles.</summary>
    static void QuantTiles(in WeightMatrix w, float* x, int rows, float* y, int ldy, float* bias, int o0, int o1)
    {
        int n = w.Cols;
        long rowBytes = w.RowBytes;
        var data = (byte*)w.Data;
        var format = w.Quant;
        float* t = Scratch(Tile * n);   // [Tile, n]
        bool wide = UseWideTiles && Vector512.IsHardwareAccelerated;
        int o = o0;
        for (; o + Tile <= o1; o += Tile)
        {
            for (int k = 0; k < Tile; k++) BlockQuant.DequantizeRow(format, data + (o + k) * rowBytes, t + k * n, n);
            float* b = bias is null ? null : bias + o;
            int r = 0;
            if (wide)
                for (; r + 4 <= rows; r += 4) Tile4x4<F32>((byte*)t, 4L * n, n, x + (long)r * n, y + (long)r * ldy + o, ldy, b, null);
            for (; r + 2 <= rows; r += 2) Tile2(t, n, x + (long)r * n, y + (long)r * ldy + o, ldy, b);
            if (r < rows) Tile1<F32>((byte*)t, n, x + (long)r * n, y + (long)r * ldy + o, b);
        }
        for (; o < o1; o++)
        {
            BlockQuant.DequantizeRow(format, data + o * rowBytes, t, n);
            for (int r = 0; r < rows; r++)
            {
                float dot = Dot<F32>((byte*)t, x + (long)r * n, n);
                y[(long)r * ldy + o] = bias is null ? dot : dot + bias[o];
            }
        }
    }

    /// <summary>Without AVX2: each weight row is dequantized into scratch and dotted with every activation row.</summary>
    static void QuantPortable(in WeightMatrix w, float* x, int rows, float* y, int ldy, float* bias, int o0, int o1)
    {
        int n = w.Cols;
        long rowBytes = w.RowBytes;
        float* row = Scratch(n);
        var format = w.Quant;
        var values = new ReadOnlySpan<float>(row, n);
        for (int o = o0; o < o1; o++)
        {
            BlockQuant.DequantizeRow(format, (byte*)w.Data + o * rowBytes, row, n);
            for (int r = 0; r < rows; r++)
            {
                float dot = TensorPrimitives.Dot(values, new ReadOnlySpan<float>(x + (long)r * n, n));
                y[(long)r * ldy + o] = bias is null ? dot : dot + bias[o];
            }
        }
    }

    /// <summary>
    /// Scales of <paramref name="count"/> consecutive blocks of four rows, times <paramref name="factor"/> (a power of
    /// two) and, for the integer kernels, the activation blocks' scales <paramref name="dx"/>, into <paramref name="scales"/>
    /// <c>[Tile, ScaleChunk]</c>: eight at a time with a gather of each block's first four bytes and an exact vector f16
    /// conversion. A last partial group is gathered too (its missing lanes repeat a block and are written past
    /// <paramref name="count"/>, inside the row's slot): the runtime's scalar f16 conversion of up to seven blocks cost
    /// as much as the gathers for a 768-wide nf4 row.
    /// </summary>
    [SkipLocalsInit]
    static void TileScales(byte* w0, byte* w1, byte* w2, byte* w3, int count, float* scales, float factor, float* dx = null)
    {
        if (!Avx2.IsSupported)
        {
            for (int k = 0; k < Tile; k++)
            {
                byte* w = k switch { 0 => w0, 1 => w1, 2 => w2, _ => w3 };
                for (int b = 0; b < count; b++) scales[k * ScaleChunk + b] = BlockScale(w + b * BlockBytes) * factor * (dx is null ? 1 : dx[b]);
            }
            return;
        }
        var offsets = Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7) * BlockBytes;
        var f = Vector256.Create(factor);
        int full = count & ~7, rest = count - full;
        for (int k = 0; k < Tile; k++)
        {
            byte* w = k switch { 0 => w0, 1 => w1, 2 => w2, _ => w3 };
            float* dst = scales + k * ScaleChunk;
            for (int b = 0; b < full; b += 8)
            {
                var d = HalfToSingle(Avx2.GatherVector256((int*)(w + b * BlockBytes), offsets, 1)) * f;
                (dx is null ? d : d * Vector256.Load(dx + b)).Store(dst + b);
            }
        }
        if (rest == 0) return;
        float* tail = stackalloc float[8];   // the last group's dx · factor, zero past count
        for (int i = 0; i < 8; i++) tail[i] = i >= rest ? 0 : dx is null ? factor : dx[full + i] * factor;
        var last = Vector256.Min(Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7), Vector256.Create(rest - 1)) * BlockBytes;
        var t = Vector256.Load(tail);
        for (int k = 0; k < Tile; k++)
        {
            byte* w = k switch { 0 => w0, 1 => w1, 2 => w2, _ => w3 };
            (HalfToSingle(Avx2.GatherVector256((int*)(w + full * BlockBytes), last, 1)) * t).Store(scales + k * ScaleChunk + full);
        }
    }

    /// <summary>
    /// The f16 in the low half of each lane as f32, exact for every finite half. Normals move their bits and subnormals
    /// convert as integers times 2^-24, so no f32 denormal is ever multiplied (a slow microcode assist on Intel).
    /// </summary>
    static Vector256<float> HalfToSingle(Vector256<int> h)
    {
        var magnitude = h & Vector256.Create(0x7FFF);
        var sign = Vector256.ShiftLeft(h & Vector256.Create(0x8000), 16);
        var normal = Vector256.ShiftLeft(magnitude, 13) + Vector256.Create(112 << 23);
        var small = Vector256.ConvertToSingle(magnitude) * Vector256.Create(TwoToMinus24);
        var infNan = Vector256.ShiftLeft(magnitude, 13) | Vector256.Create(0x7F800000);
        var bits = Vector256.ConditionalSelect(Vector256.LessThan(magnitude, Vector256.Create(0x0400)), small.AsInt32(), normal);
        bits = Vector256.ConditionalSelect(Vector256.GreaterThan(magnitude, Vector256.Create(0x7BFF)), infNan, bits);
        return (bits | sign).AsSingle();
    }

    /// <summary>A block's f16 scale as f32 (the runtime's conversion: only for the few blocks a gather does not cover).</summary>
    static float BlockScale(byte* block) => (float)BitConverter.UInt16BitsToHalf(*(ushort*)block);
}
