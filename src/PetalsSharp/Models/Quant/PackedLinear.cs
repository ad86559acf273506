using PetalsSharp.Models.Kernels;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PetalsSharp.Models.Quant;

/// <summary>
/// <c>x · Wᵀ + b</c> for a weight packed in a block format (uint8 <c>[out, RowBytes(in)]</c>). Steps of up to
/// <see cref="MatRows.MaxRows"/> rows read the packed bytes in place (<see cref="MatRows"/>); longer ones (prefill)
/// dequantize a tile of output rows at a time into one f32 buffer and multiply it there, so no f32 copy of the
/// matrix is ever whole. Under autograd the matrix is dequantized whole for the product (backward needs it to
/// compute the input's gradient); the packed weight itself never takes a gradient.
/// </summary>
public static unsafe class PackedLinear
{
    /// <summary>The packed weight as the kernels read it; null off the CPU or when not contiguous.</summary>
    public static WeightMatrix? Matrix(Tensor packed, QuantFormat format, long inFeatures, Tensor? scales = null)
    {
        if (packed.dtype != ScalarType.Byte || packed.dim() != 2 || packed.device_type != DeviceType.CPU || !packed.is_contiguous()) return null;
        float* side = scales is not null && scales.dtype == ScalarType.Float32 && scales.is_contiguous()
            && scales.shape.SequenceEqual([packed.shape[0], format.Blocks(inFeatures)]) ? Weights.NativeMemory.Pointer<float>(scales) : null;
        return WeightMatrix.Quantized(Weights.NativeMemory.Pointer<byte>(packed), format, (int)packed.shape[0], (int)inFeatures, scales: side);
    }

    /// <summary>The f32 block scales of a packed matrix, <c>[rows, blocks]</c> (exact: every f16 is an f32).</summary>
    public static Tensor BlockScales(Tensor packed, QuantFormat format, long inFeatures)
    {
        long rows = packed.shape[0];
        int blocks = format.Blocks(inFeatures);
        long rowBytes = format.RowBytes(inFeatures);
        var result = empty([rows, blocks], ScalarType.Float32);                                   // [rows, blocks]
        byte* src = Weights.NativeMemory.Pointer<byte>(packed);
        float* dst = Weights.NativeMemory.Pointer<float>(result);
        for (long r = 0; r < rows; r++)
            for (int b = 0; b < blocks; b++)
                dst[r * blocks + b] = (float)BitConverter.UInt16BitsToHalf(*(ushort*)(src + r * rowBytes + (long)b * QuantFormats.BlockBytes));
        GC.KeepAlive(packed);
        return result;
    }

    /// <summary><c>x [..., in]</c> to <c>[..., out]</c>, in x's dtype.</summary>
    public static Tensor Forward(Tensor x, Tensor packed, QuantFormat format, long inFeatures, Tensor? bias, Tensor? scales = null)
    {
        var matrix = Matrix(packed, format, inFeatures, scales)
            ?? throw new NotSupportedException($"{format.Name()} weights are computed on the CPU only (the weight is on {packed.device})");
        if (x.shape[^1] != inFeatures)
            throw new ArgumentException($"input has {x.shape[^1]} features, the layer takes {inFeatures}");
        long outF = matrix.Rows;
        bool grad = x.requires_grad || (bias is not null && bias.requires_grad);
        if (!grad && MatRowsLinear.TryLinear(x, matrix, packed, bias, out var y)) return y;   // 1 to 16 rows, in place
        if (grad)
        {
            using var whole = Dequantize(packed, format, inFeatures, 0, outF);                   // [out, in] f32
            return F.linear(x, whole.to(x.dtype), bias?.to(x.dtype));                           // [..., out]
        }
        return Tiled(packed, format, inFeatures, x, bias);
    }

    /// <summary>Rows [<paramref name="start"/>, +<paramref name="count"/>) of the packed matrix as f32 <c>[count, in]</c>.</summary>
    public static Tensor Dequantize(Tensor packed, QuantFormat format, long inFeatures, long start, long count)
    {
        var result = empty([count, inFeatures], ScalarType.Float32);                              // [count, in]
        DequantizeInto(packed, format, inFeatures, start, count, result);
        return result;
    }

    static void DequantizeInto(Tensor packed, QuantFormat format, long inFeatures, long start, long count, Tensor dst)
    {
        long rowBytes = format.RowBytes(inFeatures);
        byte* src = Weights.NativeMemory.Pointer<byte>(packed) + start * rowBytes;
        float* d = Weights.NativeMemory.Pointer<float>(dst);
        // Row by row in parallel: a prefill tile is millions of values and each row is independent.
        Parallel.For(0, (int)count, r => BlockQuant.Dequantize(format,
            new ReadOnlySpan<byte>(src + r * rowBytes, (int)rowBytes), 1, (int)inFeatures, new Span<float>(d + r * inFeatures, (int)inFeatures)));
        GC.KeepAlive(packed);
    }

    /// <summary>
    /// f32 bytes of one dequantized tile: a quarter of <see cref="TiledLinear"/>'s, because packed weights are a quarter
    /// to an eighth of f32 and the transient is measured against them (a 64-token prefill of four 8B-shaped nf4 blocks
    /// peaked 0.20 GB above its 0.46 GB of weights with 16 MB tiles). A 4 MB tile still holds 256 rows at hidden 4096.
    /// </summary>
    internal const long TileBytes = 4L << 20;

    /// <summary>Prefill: a tile of output rows dequantized at a time into one reused buffer (as <see cref="TiledLinear"/>).</summary>
    static Tensor Tiled(Tensor packed, QuantFormat format, long inFeatures, Tensor x, Tensor? bias)
    {
        long outF = packed.shape[0];
        long tile = Math.Max(1, Math.Min(outF, TileBytes / (inFeatures * 4)));
        using var scope = NewDisposeScope();
        var shape = x.shape.ToArray();
        shape[^1] = outF;
        var y = empty(shape, x.dtype, x.device);                                                  // [..., out]
        using var buffer = empty([tile, inFeatures], ScalarType.Float32);                         // [tile, in]
        for (long start = 0; start < outF; start += tile)
        {
            long n = Math.Min(tile, outF - start);
            using var w = buffer.narrow(0, 0, n);                                                 // [n, in]
            DequantizeInto(packed, format, inFeatures, start, n, w);
            using var wx = w.to(x.dtype);                                                         // [n, in]
            using var b = bias?.narrow(0, start, n).to(x.dtype);                                  // [n]
            using var part = F.linear(x, wx, b);                                                  // [..., n]
            using var slot = y.narrow(-1, start, n);                                              // [..., n]
            slot.copy_(part);
        }
        return y.MoveToOuterDisposeScope();
    }
}
