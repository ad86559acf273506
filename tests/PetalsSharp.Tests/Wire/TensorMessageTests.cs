using Google.Protobuf;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using Xunit;
using static TorchSharp.torch;
using WireTensor = PetalsSharp.Wire.V1.Tensor;

namespace PetalsSharp.Tests.Wire;

/// <summary>The copy-free Tensor reader agrees with Google.Protobuf's parser and refuses what it would refuse.</summary>
public sealed class TensorMessageTests
{
    [Theory]
    [InlineData(Compression.None)]
    [InlineData(Compression.Float16)]
    [InlineData(Compression.Bfloat16)]
    [InlineData(Compression.Int8Blockwise)]
    public void Parses_what_protobuf_parses_and_aliases_the_bytes(Compression c)
    {
        using var x = randn(2, 300, 64, generator: new Generator(3));   // [B, T, H]
        var bytes = TensorCodec.Encode(x, c).ToByteArray();
        var got = TensorMessage.ParseWithoutCopy(bytes, "hidden");
        Assert.Equal(WireTensor.Parser.ParseFrom(bytes), got);
        bytes[^1] ^= 0xFF;    // the data (or scales) are a view of the buffer, not a copy
        Assert.Equal(WireTensor.Parser.ParseFrom(bytes), got);
    }

    [Fact]
    public void Skips_unknown_fields_and_reads_unpacked_shapes()
    {
        var bytes = new byte[] { 0x08, 0x02, 0x08, 0x03, 0x10, 0x01, 0x38, 0x05, 0x42, 0x01, 0x00, 0x22, 0x02, 0xAA, 0xBB };
        var got = TensorMessage.ParseWithoutCopy(bytes, "t");
        var expected = WireTensor.Parser.ParseFrom(bytes);   // keeps the unknown fields, which we drop
        Assert.Equal(expected.Shape, got.Shape);
        Assert.Equal(expected.Dtype, got.Dtype);
        Assert.Equal(expected.Data, got.Data);
        Assert.Equal(new long[] { 2, 3 }, got.Shape);
    }

    [Theory]
    [InlineData(new byte[] { 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF })]                 // truncated varint
    [InlineData(new byte[] { 0x22, 0x10, 0x01 })]                                   // data longer than the message
    [InlineData(new byte[] { 0x0A, 0x05, 0x01 })]                                   // packed shape past the end
    [InlineData(new byte[] { 0x00, 0x01 })]                                         // field 0
    [InlineData(new byte[] { 0x0B })]                                               // wire type 3 (groups)
    public void Refuses_malformed_messages(byte[] bytes)
    {
        Assert.ThrowsAny<InvalidProtocolBufferException>(() => WireTensor.Parser.ParseFrom(bytes));
        var e = Assert.Throws<WireException>(() => TensorMessage.ParseWithoutCopy(bytes, "hidden"));
        Assert.Contains("tensor 'hidden' is not a valid Tensor message", e.Message);
    }

    [Fact]
    public void Refuses_a_shape_of_many_entries()
    {
        var t = new WireTensor();
        t.Shape.AddRange(Enumerable.Repeat(1L, 1000));
        var e = Assert.Throws<WireException>(() => TensorMessage.ParseWithoutCopy(t.ToByteArray(), "hidden"));
        Assert.Contains("dimensions", e.Message);
    }
}
