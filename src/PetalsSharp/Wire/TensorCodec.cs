using System.Buffers.Binary;
using Google.Protobuf;
using PetalsSharp.Wire.V1;
using static TorchSharp.torch;
using WireTensor = PetalsSharp.Wire.V1.Tensor;

namespace PetalsSharp.Wire;

/// <summary>
/// Tensors to and from the wire, with the four compressions. Decoding treats every field as hostile: the shape,
/// the element count, the byte length of the payload and the dtype/compression pair are all checked before a
/// single byte is copied, and the result is always a fresh, contiguous CPU tensor.
/// </summary>
public static unsafe class TensorCodec
{
    /// <summary>Values per INT8_BLOCKWISE block (one float32 scale each).</summary>
    public const int BlockSize = 64;

    public static readonly IReadOnlyList<Compression> Supported =
        [Compression.None, Compression.Float16, Compression.Bfloat16, Compression.Int8Blockwise];

    /// <summary>Encodes a float32 (any compression) or int64 (no compression) tensor.</summary>
    public static WireTensor Encode(TorchSharp.torch.Tensor t, Compression compression = Compression.None)
    {
        using var scope = NewDisposeScope();
        var c = t.detach().cpu().contiguous();
        var msg = new WireTensor { Compression = compression };
        msg.Shape.AddRange(c.shape);
        if (c.dtype == ScalarType.Int64)
        {
            if (compression != Compression.None) throw new ArgumentException("int64 tensors travel uncompressed");
            msg.Dtype = DType.Int64;
            msg.Data = ByteString.CopyFrom(TensorSpan.Bytes(c));
            return msg;
        }
        if (c.dtype != ScalarType.Float32) c = c.to(ScalarType.Float32);
        msg.Dtype = DType.Float32;
        // A view of the contiguous CPU tensor's storage: no copy is made here.
        var values = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(TensorSpan.Bytes(c));
        switch (compression)
        {
            case Compression.None:
                msg.Data = ByteString.CopyFrom(System.Runtime.InteropServices.MemoryMarshal.AsBytes(values));
                break;
            case Compression.Float16:
            {
                var bytes = new byte[values.Length * 2];
                for (int i = 0; i < values.Length; i++)
                    BinaryPrimitives.WriteHalfLittleEndian(bytes.AsSpan(i * 2), (Half)Math.Clamp(values[i], -65504f, 65504f));
                msg.Data = UnsafeByteOperations.UnsafeWrap(bytes);
                break;
            }
            case Compression.Bfloat16:
            {
                var bytes = new byte[values.Length * 2];
                for (int i = 0; i < values.Length; i++)
                    BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(i * 2), ToBFloat16(values[i]));
                msg.Data = UnsafeByteOperations.UnsafeWrap(bytes);
                break;
            }
            case Compression.Int8Blockwise:
                EncodeInt8(values, msg);
                break;
            default:
                throw new ArgumentException($"unknown compression {compression}");
        }
        return msg;
    }

    /// <summary>Decodes a wire tensor; throws <see cref="WireException"/> on anything malformed.</summary>
    /// <param name="msg">The message.</param>
    /// <param name="what">Names the tensor in errors ("hidden", "hypo_ids").</param>
    /// <param name="maxElements">Largest element count accepted.</param>
    public static TorchSharp.torch.Tensor Decode(WireTensor msg, string what, long maxElements = 1L << 28)
    {
        if (msg is null) throw new WireException($"{what}: missing tensor");
        if (msg.Shape.Count is 0 or > 8) throw new WireException($"{what}: rank {msg.Shape.Count} is not supported (1 to 8 dimensions)");
        long n = 1;
        foreach (var d in msg.Shape)
        {
            if (d < 0) throw new WireException($"{what}: negative dimension {d} in shape [{string.Join(", ", msg.Shape)}]");
            if (d > maxElements || (n = n * d) > maxElements)
                throw new WireException($"{what}: shape [{string.Join(", ", msg.Shape)}] exceeds the limit of {maxElements} elements");
        }
        var data = msg.Data.Span;
        if (msg.Dtype == DType.Int64)
        {
            if (msg.Compression != Compression.None) throw new WireException($"{what}: int64 tensors must be uncompressed");
            ExpectBytes(what, data.Length, n * 8, msg.Compression);
            var t = empty(msg.Shape.ToArray(), ScalarType.Int64);
            data.CopyTo(TensorSpan.Bytes(t));
            return t;
        }
        if (msg.Dtype != DType.Float32) throw new WireException($"{what}: dtype {msg.Dtype} is not accepted (float32 or int64)");
        var result = empty(msg.Shape.ToArray(), ScalarType.Float32);
        var dst = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(TensorSpan.Bytes(result));
        switch (msg.Compression)
        {
            case Compression.None:
                ExpectBytes(what, data.Length, n * 4, msg.Compression);
                data.CopyTo(System.Runtime.InteropServices.MemoryMarshal.AsBytes(dst));
                break;
            case Compression.Float16:
                ExpectBytes(what, data.Length, n * 2, msg.Compression);
                for (int i = 0; i < dst.Length; i++) dst[i] = (float)BinaryPrimitives.ReadHalfLittleEndian(data[(i * 2)..]);
                break;
            case Compression.Bfloat16:
                ExpectBytes(what, data.Length, n * 2, msg.Compression);
                for (int i = 0; i < dst.Length; i++)
                    dst[i] = BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(data[(i * 2)..]) << 16);
                break;
            case Compression.Int8Blockwise:
                DecodeInt8(what, msg, dst);
                break;
            default:
                result.Dispose();
                throw new WireException($"{what}: unknown compression {(int)msg.Compression}");
        }
        if (msg.Compression != Compression.Int8Blockwise && msg.Scales.Length != 0)
            throw new WireException($"{what}: scales are only allowed with INT8_BLOCKWISE");
        return result;
    }


    /// <summary>Throws when a tensor holds NaN or ±Inf (a poisoned activation would corrupt a shared cache).</summary>
    public static void RequireFinite(TorchSharp.torch.Tensor t, string what)
    {
        if (!t.is_floating_point() || t.NumberOfElements == 0) return;
        // Read in place: isfinite() would allocate a bool per value (a quarter of a large tensor again), and for a
        // decode step's few kilobytes its three native calls cost more than the check.
        if (t.dtype == ScalarType.Float32
            && t.device_type == TorchSharp.DeviceType.CPU && t.is_contiguous())
        {
            if (!AllFinite(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, uint>(TensorSpan.Bytes(t))))
                throw new WireException($"{what}: contains NaN or infinite values");
            return;
        }
        using var finite = t.isfinite().all();
        if (!finite.item<bool>()) throw new WireException($"{what}: contains NaN or infinite values");
    }

    /// <summary>True when no float32 (given as its bits) has an all-ones exponent (NaN or ±Inf).</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    static bool AllFinite(ReadOnlySpan<uint> bits)
    {
        const uint exponent = 0x7F800000u;
        int i = 0;
        if (System.Numerics.Vector.IsHardwareAccelerated)
        {
            var mask = new System.Numerics.Vector<uint>(exponent);
            for (int step = System.Numerics.Vector<uint>.Count; i <= bits.Length - step; i += step)
                if (System.Numerics.Vector.EqualsAny(new System.Numerics.Vector<uint>(bits[i..]) & mask, mask)) return false;
        }
        for (; i < bits.Length; i++)
            if ((bits[i] & exponent) == exponent) return false;
        return true;
    }

    static void ExpectBytes(string what, long actual, long expected, Compression c)
    {
        if (actual != expected)
            throw new WireException($"{what}: {c} payload has {actual} bytes, shape needs {expected}");
    }

    static ushort ToBFloat16(float f)
    {
        uint bits = BitConverter.SingleToUInt32Bits(f);
        if (float.IsNaN(f)) return 0x7FC0;
        return (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);   // round to nearest even
    }

    static void EncodeInt8(ReadOnlySpan<float> values, WireTensor msg)
    {
        int blocks = (values.Length + BlockSize - 1) / BlockSize;
        var codes = new byte[values.Length];
        var scales = new byte[blocks * 4];
        for (int b = 0; b < blocks; b++)
        {
            var block = values.Slice(b * BlockSize, Math.Min(BlockSize, values.Length - b * BlockSize));
            float absmax = 0;
            foreach (var v in block) absmax = Math.Max(absmax, Math.Abs(v));
            float scale = absmax / 127f;
            BinaryPrimitives.WriteSingleLittleEndian(scales.AsSpan(b * 4), scale);
            for (int i = 0; i < block.Length; i++)
                codes[b * BlockSize + i] = (byte)(sbyte)(scale == 0 ? 0 : Math.Clamp(MathF.Round(block[i] / scale), -127f, 127f));
        }
        msg.Data = UnsafeByteOperations.UnsafeWrap(codes);
        msg.Scales = UnsafeByteOperations.UnsafeWrap(scales);
    }

    static void DecodeInt8(string what, WireTensor msg, Span<float> dst)
    {
        var codes = msg.Data.Span;
        var scales = msg.Scales.Span;
        ExpectBytes(what, codes.Length, dst.Length, Compression.Int8Blockwise);
        long blocks = (dst.Length + BlockSize - 1) / BlockSize;
        if (scales.Length != blocks * 4)
            throw new WireException($"{what}: INT8_BLOCKWISE needs {blocks} scales ({blocks * 4} bytes), got {scales.Length} bytes");
        for (int b = 0; b < blocks; b++)
        {
            float scale = BinaryPrimitives.ReadSingleLittleEndian(scales[(b * 4)..]);
            if (!float.IsFinite(scale) || scale < 0) throw new WireException($"{what}: block {b} has an invalid scale {scale}");
            int end = (int)Math.Min(dst.Length, (b + 1L) * BlockSize);
            for (int i = b * BlockSize; i < end; i++) dst[i] = (sbyte)codes[i] * scale;
        }
    }
}
