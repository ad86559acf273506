using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace PetalsSharp.Models.Quant;

/// <summary>
/// Quantizes rows of f32 weights into the block formats of <see cref="QuantFormat"/> and back. This is the
/// definition the kernels are pinned to: a kernel's product must equal <see cref="Dequantize"/>'d weights times x.
/// </summary>
public static class BlockQuant
{
    /// <summary>
    /// The NF4 code book (bitsandbytes' <c>create_normal_map</c>, ascending) times 127, rounded: the int8 a nibble
    /// stands for. Rounding moves no entry by more than 0.5/127 of the block's absmax, under 1 % of the gap between
    /// neighbouring entries, and lets a kernel look codes up with one byte shuffle.
    /// </summary>
    public static ReadOnlySpan<sbyte> Nf4Codes => [-127, -88, -67, -50, -36, -23, -12, 0, 10, 20, 31, 43, 56, 71, 92, 127];

    /// <summary>Quantizes <paramref name="rows"/> rows of <paramref name="inFeatures"/> values into <paramref name="packed"/> (<c>rows × RowBytes</c>).</summary>
    public static void Quantize(QuantFormat format, ReadOnlySpan<float> values, int rows, int inFeatures, Span<byte> packed)
    {
        int rowBytes = format.RowBytes(inFeatures);
        if (values.Length < (long)rows * inFeatures) throw new ArgumentException("fewer values than rows × in-features");
        if (packed.Length < (long)rows * rowBytes) throw new ArgumentException("the packed buffer is too small");
        for (int r = 0; r < rows; r++)
            QuantizeRow(format, values.Slice(r * inFeatures, inFeatures), packed.Slice(r * rowBytes, rowBytes));
    }

    /// <summary>One row: <paramref name="row"/> (in-features values) into <paramref name="packed"/> (RowBytes).</summary>
    public static void QuantizeRow(QuantFormat format, ReadOnlySpan<float> row, Span<byte> packed)
    {
        int per = format.BlockValues(), blocks = format.Blocks(row.Length);
        Span<float> block = stackalloc float[64];
        for (int b = 0; b < blocks; b++)
        {
            int start = b * per, count = Math.Min(per, row.Length - start);
            block.Clear();
            row.Slice(start, count).CopyTo(block);
            var dst = packed.Slice(b * QuantFormats.BlockBytes, QuantFormats.BlockBytes);
            if (format == QuantFormat.Int8) QuantizeInt8(block[..32], dst);
            else QuantizeNf4(block, dst);
        }
    }

    /// <summary>Scale <c>d = absmax / 127</c> as stored (f16), and its f32 value.</summary>
    static float Scale(ReadOnlySpan<float> block, Span<byte> dst)
    {
        float amax = 0;
        foreach (var v in block)
        {
            if (!float.IsFinite(v)) throw new ArgumentException("a weight is NaN or infinite; it cannot be quantized");
            amax = Math.Max(amax, Math.Abs(v));
        }
        var d = (Half)Math.Min(amax / 127f, (float)Half.MaxValue);
        BinaryPrimitives.WriteHalfLittleEndian(dst, d);
        return (float)d;
    }

    static void QuantizeInt8(ReadOnlySpan<float> block, Span<byte> dst)
    {
        float d = Scale(block, dst);
        float inv = d == 0 ? 0 : 1 / d;
        for (int i = 0; i < 32; i++) dst[2 + i] = (byte)(sbyte)Math.Clamp(MathF.Round(block[i] * inv), -127, 127);
    }

    static void QuantizeNf4(ReadOnlySpan<float> block, Span<byte> dst)
    {
        float d = Scale(block, dst);
        float inv = d == 0 ? 0 : 1 / d;
        for (int j = 0; j < 32; j++)
        {
            int lo = Nearest(block[j] * inv), hi = Nearest(block[j + 32] * inv);
            dst[2 + j] = (byte)(lo | hi << 4);
        }
    }

    /// <summary>Midpoints between neighbouring codes: a value above k of them is nearest to code k.</summary>
    static readonly float[] Midpoints = [.. Enumerable.Range(0, 15).Select(k => (Nf4CodeAt(k) + Nf4CodeAt(k + 1)) / 2f)];

    static float Nf4CodeAt(int k) => Nf4Codes[k];

    /// <summary>
    /// Index of the code nearest to <paramref name="v"/> (in units of d); a value on a midpoint goes to the lower
    /// code. Four comparisons (a search of the 15 midpoints) instead of 16 distances: packing a 70B span is billions
    /// of these.
    /// </summary>
    static int Nearest(float v)
    {
        var mids = Midpoints;
        int lo = 0, hi = mids.Length;             // count of midpoints < v lies in [lo, hi]
        while (lo < hi)
        {
            int mid = (lo + hi) >> 1;
            if (mids[mid] < v) lo = mid + 1;
            else hi = mid;
        }
        return lo;
    }

    /// <summary>Rows of packed weights back to f32: <c>rows × inFeatures</c> values into <paramref name="values"/>.</summary>
    public static unsafe void Dequantize(QuantFormat format, ReadOnlySpan<byte> packed, int rows, int inFeatures, Span<float> values)
    {
        int rowBytes = format.RowBytes(inFeatures);
        if (packed.Length < (long)rows * rowBytes) throw new ArgumentException("fewer packed bytes than rows need");
        if (values.Length < (long)rows * inFeatures) throw new ArgumentException("the value buffer is too small");
        fixed (byte* src = packed)
        fixed (float* dst = values)
            for (int r = 0; r < rows; r++) DequantizeRow(format, src + (long)r * rowBytes, dst + (long)r * inFeatures, inFeatures);
    }

    /// <summary>One packed row (<c>RowBytes</c> at <paramref name="src"/>) into <paramref name="inFeatures"/> floats.</summary>
    internal static unsafe void DequantizeRow(QuantFormat format, byte* src, float* dst, int inFeatures)
    {
        int per = format.BlockValues(), full = inFeatures / per;
        for (int b = 0; b < full; b++) DequantizeBlock(format, src + b * QuantFormats.BlockBytes, dst + b * per);
        int rest = inFeatures - full * per;
        if (rest == 0) return;
        float* block = stackalloc float[64];
        DequantizeBlock(format, src + full * QuantFormats.BlockBytes, block);
        new ReadOnlySpan<float>(block, rest).CopyTo(new Span<float>(dst + full * per, rest));
    }

    /// <summary>One whole block (32 or 64 values); <see cref="DequantizeBlockScalar"/> says what it computes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void DequantizeBlock(QuantFormat format, byte* src, float* dst)
    {
        if (!Vector256.IsHardwareAccelerated || (format == QuantFormat.Nf4 && !Ssse3.IsSupported))
        {
            DequantizeBlockScalar(format, new ReadOnlySpan<byte>(src, QuantFormats.BlockBytes), new Span<float>(dst, format.BlockValues()));
            return;
        }
        var dv = Vector256.Create((float)BinaryPrimitives.ReadHalfLittleEndian(new ReadOnlySpan<byte>(src, 2)));
        byte* q = src + 2;
        if (format == QuantFormat.Int8)
        {
            for (int i = 0; i < 32; i += 8)
            {
                var bytes = Vector128.CreateScalar(*(long*)(q + i)).AsSByte();
                var wide = Vector256.WidenLower(Vector128.WidenLower(bytes).ToVector256Unsafe());   // 8 × int32
                (Vector256.ConvertToSingle(wide) * dv).Store(dst + i);
            }
            return;
        }
        // Nf4: 16 payload bytes give values j..j+15 (low nibbles) and j+32..j+47 (high ones); one byte shuffle looks
        // sixteen codes up at once.
        var table = Vector128.Create(Nf4Codes);
        for (int j = 0; j < 32; j += 16)
        {
            var bytes = Vector128.Load(q + j);
            var lo = Ssse3.Shuffle(table, (bytes & Vector128.Create((byte)0x0F)).AsSByte());
            var hi = Ssse3.Shuffle(table, Vector128.ShiftRightLogical(bytes, 4).AsSByte());
            StoreCodes(lo, dv, dst + j);
            StoreCodes(hi, dv, dst + j + 32);
        }
    }

    /// <summary>Sixteen int8 codes times <paramref name="d"/> into <paramref name="dst"/>[0..16).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void StoreCodes(Vector128<sbyte> codes, Vector256<float> d, float* dst)
    {
        var shorts = Vector128.WidenLower(codes).ToVector256Unsafe().WithUpper(Vector128.WidenUpper(codes));   // 16 × int16
        (Vector256.ConvertToSingle(Vector256.WidenLower(shorts)) * d).Store(dst);
        (Vector256.ConvertToSingle(Vector256.WidenUpper(shorts)) * d).Store(dst + 8);
    }

    /// <summary>The definition of a block's values: <c>d · q</c>, <c>q</c> the int8 byte or the nibble's code.</summary>
    static void DequantizeBlockScalar(QuantFormat format, ReadOnlySpan<byte> src, Span<float> dst)
    {
        float d = (float)BinaryPrimitives.ReadHalfLittleEndian(src);
        var q = src[2..];
        if (format == QuantFormat.Int8)
        {
            for (int i = 0; i < 32; i++) dst[i] = d * (sbyte)q[i];
            return;
        }
        var codes = Nf4Codes;
        for (int j = 0; j < 32; j++)
        {
            dst[j] = d * codes[q[j] & 0xF];
            dst[j + 32] = d * codes[q[j] >> 4];
        }
    }
}
