using Google.Protobuf;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using Xunit;
using static TorchSharp.torch;
using WireTensor = PetalsSharp.Wire.V1.Tensor;

namespace PetalsSharp.Tests.Wire;

/// <summary>Decoding while the bytes arrive gives TensorCodec.Decode's result bit for bit, and refuses what it refuses.</summary>
public sealed class TensorStreamDecoderTests
{
    static TorchSharp.torch.Tensor Stream(byte[] bytes, int partBytes, long maxElements = 1L << 28, Action<long>? reserve = null)
    {
        using var decoder = new TensorStreamDecoder("hidden", maxElements, reserve: reserve);
        for (int at = 0; at < bytes.Length; at += partBytes) decoder.Write(bytes.AsSpan(at, Math.Min(partBytes, bytes.Length - at)));
        return decoder.Finish();
    }

    static bool BitEqual(TorchSharp.torch.Tensor a, TorchSharp.torch.Tensor b) =>
        a.shape.SequenceEqual(b.shape) && a.dtype == b.dtype && a.bytes.SequenceEqual(b.bytes);

    [Theory]
    [InlineData(Compression.None, 1)]
    [InlineData(Compression.None, 4093)]
    [InlineData(Compression.Float16, 1)]
    [InlineData(Compression.Float16, 4093)]
    [InlineData(Compression.Bfloat16, 3)]
    [InlineData(Compression.Bfloat16, 1 << 20)]
    [InlineData(Compression.Int8Blockwise, 1)]
    [InlineData(Compression.Int8Blockwise, 4093)]
    public void Decodes_every_compression_in_parts_of_any_size(Compression c, int partBytes)
    {
        using var x = randn(3, 37, 64, generator: new Generator(5)) * 100;   // [B, T, H]
        var msg = TensorCodec.Encode(x, c);
        using var expected = TensorCodec.Decode(msg, "hidden");
        long reserved = 0;
        using var got = Stream(msg.ToByteArray(), partBytes, reserve: n => reserved += n);
        Assert.True(BitEqual(expected, got));
        Assert.Equal(expected.NumberOfElements * 4 + msg.Scales.Length, reserved);
    }

    [Fact]
    public void Decodes_int64_empty_tensors_and_scales_before_data()
    {
        using var ids = tensor(new long[] { 3, -1, long.MaxValue });
        using (var got = Stream(TensorCodec.Encode(ids).ToByteArray(), 5)) Assert.True(BitEqual(ids, got));
        using var empty = zeros(2, 0, 64);                                      // [B, 0, H]: proto3 leaves the data out
        using (var got = Stream(TensorCodec.Encode(empty).ToByteArray(), 7)) Assert.Equal([2L, 0, 64], got.shape);

        // Another encoder may write scales before the codes: the values are the same.
        using var x = randn(2, 100, generator: new Generator(9));                // [B, H]
        var msg = TensorCodec.Encode(x, Compression.Int8Blockwise);
        using var expected = TensorCodec.Decode(msg, "hidden");
        var reordered = new WireTensor { Dtype = msg.Dtype, Compression = msg.Compression, Scales = msg.Scales };
        reordered.Shape.AddRange(msg.Shape);
        var bytes = reordered.ToByteArray().Concat(new WireTensor { Data = msg.Data }.ToByteArray()).ToArray();
        using var got2 = Stream(bytes, 11);
        Assert.True(BitEqual(expected, got2));
    }

    [Fact]
    public void Refuses_what_the_codec_refuses_and_out_of_order_headers()
    {
        using var x = randn(2, 8, 64);                                           // [B, T, H]
        var msg = TensorCodec.Encode(x);
        var bytes = msg.ToByteArray();

        Assert.Contains("exceeds the limit", Assert.Throws<WireException>(() => Stream(bytes, 64, maxElements: 100)).Message);
        Assert.Contains("truncated", Assert.Throws<WireException>(() => Stream(bytes[..^1], 64)).Message);
        var twice = bytes.Concat(new WireTensor { Data = msg.Data }.ToByteArray()).ToArray();
        Assert.Contains("data sent twice", Assert.Throws<WireException>(() => Stream(twice, 64)).Message);
        var lateShape = bytes.Concat(new byte[] { 8, 1 }).ToArray();             // field 1 (shape), varint 1
        Assert.Contains("after the data", Assert.Throws<WireException>(() => Stream(lateShape, 64)).Message);
        var f16 = TensorCodec.Encode(x, Compression.Float16);
        f16.Scales = ByteString.CopyFrom(new byte[4]);
        Assert.Contains("only allowed with INT8_BLOCKWISE", Assert.Throws<WireException>(() => Stream(f16.ToByteArray(), 64)).Message);
        var badScale = TensorCodec.Encode(x, Compression.Int8Blockwise);
        var scales = badScale.Scales.ToByteArray();
        BitConverter.GetBytes(float.NaN).CopyTo(scales, 4);
        badScale.Scales = ByteString.CopyFrom(scales);
        Assert.Contains("block 1 has an invalid scale", Assert.Throws<WireException>(() => Stream(badScale.ToByteArray(), 64)).Message);
        var noScales = TensorCodec.Encode(x, Compression.Int8Blockwise);
        noScales.Scales = ByteString.Empty;
        Assert.Contains("needs 16 scales", Assert.Throws<WireException>(() => Stream(noScales.ToByteArray(), 64)).Message);
        var wrongBytes = new WireTensor { Dtype = DType.Float32, Data = ByteString.CopyFrom(new byte[12]) };
        wrongBytes.Shape.AddRange([2, 2]);
        Assert.Contains("shape needs 16", Assert.Throws<WireException>(() => Stream(wrongBytes.ToByteArray(), 3)).Message);
    }

    [Fact]
    public void The_header_check_runs_before_anything_is_allocated()
    {
        var msg = new WireTensor { Dtype = DType.Float32 };
        msg.Shape.AddRange([1, 1 << 20, 64]);
        using var decoder = new TensorStreamDecoder("hidden", 1L << 28, _ => throw new WireException("refused by the caller"));
        long before = GC.GetAllocatedBytesForCurrentThread();
        // The header, then the data field's tag and its length (256 MiB), and not a value yet.
        byte[] head = [.. msg.ToByteArray(), 0x22, 0x80, 0x80, 0x80, 0x80, 0x01];
        Assert.Contains("refused by the caller", Assert.Throws<WireException>(() => decoder.Write(head)).Message);
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 1 << 20);
    }
}
