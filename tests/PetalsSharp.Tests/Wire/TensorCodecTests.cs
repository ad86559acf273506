using Google.Protobuf;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using Xunit;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace PetalsSharp.Tests.Wire;

/// <summary>Each compression's error bound, and the decoder's refusals.</summary>
public sealed class TensorCodecTests
{
    static Tensor Sample()
    {
        manual_seed(1);
        // activations of very different sizes: wide range per block exercises the int8 scales
        return cat([randn(3, 7, 64) * 30, randn(1, 7, 64) * 1e-3, randn(2, 7, 64)], 0);   // [6, 7, 64]
    }

    static Tensor RoundTrip(Tensor t, Compression c) => TensorCodec.Decode(TensorCodec.Encode(t, c), "t");

    [Fact]
    public void None_is_exact_and_keeps_int64()
    {
        using var scope = NewDisposeScope();
        var t = Sample();
        Assert.True(RoundTrip(t, Compression.None).equal(t).all().item<bool>());
        var ids = tensor(new long[] { 3, -1, long.MaxValue });
        Assert.True(RoundTrip(ids, Compression.None).equal(ids).all().item<bool>());
    }

    [Fact]
    public void Float16_error_is_at_most_half_an_ulp()
    {
        using var scope = NewDisposeScope();
        var t = Sample();
        var err = (RoundTrip(t, Compression.Float16) - t).abs();
        // half precision: 11-bit significand, so |err| <= 2^-11 |x| for normal values, 2^-25 absolute below them
        var bound = t.abs() * Math.Pow(2, -11) + Math.Pow(2, -25);
        Assert.True(err.le(bound).all().item<bool>());
    }

    [Fact]
    public void Float16_clamps_out_of_range_values_instead_of_making_infinities()
    {
        using var scope = NewDisposeScope();
        var back = RoundTrip(tensor(new float[] { 1e6f, -1e6f }), Compression.Float16);
        Assert.Equal(new[] { 65504f, -65504f }, back.data<float>().ToArray());
    }

    [Fact]
    public void Bfloat16_error_is_at_most_half_an_ulp()
    {
        using var scope = NewDisposeScope();
        var t = Sample();
        var err = (RoundTrip(t, Compression.Bfloat16) - t).abs();
        Assert.True(err.le(t.abs() * Math.Pow(2, -8)).all().item<bool>());   // 8-bit significand: half a spacing is <= 2^-8 |x|
        var viaTorch = t.to(ScalarType.BFloat16).to(ScalarType.Float32);   // same rounding as libtorch
        Assert.True(RoundTrip(t, Compression.Bfloat16).equal(viaTorch).all().item<bool>());
    }

    [Fact]
    public void Int8_blockwise_error_is_at_most_half_a_step_of_each_block()
    {
        using var scope = NewDisposeScope();
        var t = Sample();
        var flat = t.flatten();
        var back = RoundTrip(t, Compression.Int8Blockwise).flatten();
        for (long start = 0; start < flat.shape[0]; start += TensorCodec.BlockSize)
        {
            var len = Math.Min(TensorCodec.BlockSize, flat.shape[0] - start);
            var block = flat.narrow(0, start, len);
            var step = block.abs().max().item<float>() / 127f;
            var err = (back.narrow(0, start, len) - block).abs().max().item<float>();
            Assert.True(err <= step / 2 * 1.0001 + 1e-12, $"block at {start}: error {err} > {step / 2}");
        }
        var size = TensorCodec.Encode(t, Compression.Int8Blockwise).CalculateSize();
        Assert.True(size < t.NumberOfElements * 4 / 3, "int8 should be about a quarter of f32 plus scales");
    }

    [Theory]
    [InlineData("negative dim")]
    [InlineData("too many elements")]
    [InlineData("short payload")]
    [InlineData("long payload")]
    [InlineData("bad dtype")]
    [InlineData("compressed int64")]
    [InlineData("unknown compression")]
    [InlineData("int8 without scales")]
    [InlineData("int8 NaN scale")]
    [InlineData("scales without int8")]
    [InlineData("no shape")]
    public void Malformed_tensors_are_refused_with_a_reason(string scenario)
    {
        var good = TensorCodec.Encode(ones(2, 3), Compression.None);
        var m = good.Clone();
        switch (scenario)
        {
            case "negative dim": m.Shape[0] = -2; break;
            case "too many elements": m.Shape[0] = 1L << 40; break;
            case "short payload": m.Data = ByteString.CopyFrom(good.Data.Span[..^1]); break;
            case "long payload": m.Data = ByteString.CopyFrom([.. good.Data.Span, 0]); break;
            case "bad dtype": m.Dtype = DType.Bfloat16; break;
            case "compressed int64": m.Dtype = DType.Int64; m.Compression = Compression.Float16; break;
            case "unknown compression": m.Compression = (Compression)77; break;
            case "int8 without scales": m = TensorCodec.Encode(ones(2, 3), Compression.Int8Blockwise); m.Scales = ByteString.Empty; break;
            case "int8 NaN scale": m = TensorCodec.Encode(ones(2, 3), Compression.Int8Blockwise); m.Scales = ByteString.CopyFrom(BitConverter.GetBytes(float.NaN)); break;
            case "scales without int8": m.Scales = ByteString.CopyFrom(new byte[4]); break;
            case "no shape": m.Shape.Clear(); break;
        }
        var e = Assert.Throws<WireException>(() => TensorCodec.Decode(m, "hidden"));
        Assert.StartsWith("hidden:", e.Message);
    }

    [Fact]
    public void Non_finite_values_are_refused()
    {
        Assert.Throws<WireException>(() => TensorCodec.RequireFinite(tensor(new[] { 1f, float.NaN }), "x"));
        Assert.Throws<WireException>(() => TensorCodec.RequireFinite(tensor(new[] { float.PositiveInfinity }), "x"));
        TensorCodec.RequireFinite(tensor(new[] { 1f, 2f }), "x");
    }

    [Fact]
    public void Chunks_reassemble_and_refuse_lies()
    {
        using var scope = NewDisposeScope();
        var t = randn(4, 300, 64);   // ~300 KiB in 3 chunks of 128 KiB
        var chunks = TensorChunks.Split("hidden", TensorCodec.Encode(t), chunkBytes: 128 << 10).ToList();
        Assert.True(chunks.Count >= 3);
        var asm = new TensorAssembler(["hidden"], 1 << 20);
        foreach (var c in chunks) asm.Add(c.Chunk);
        asm.RequireComplete();
        Assert.True(TensorCodec.Decode(asm.Completed["hidden"], "hidden").equal(t).all().item<bool>());

        Assert.Throws<WireException>(() => new TensorAssembler(["hidden"], 1000).Add(chunks[0].Chunk));          // over the limit
        Assert.Throws<WireException>(() => new TensorAssembler(["grad"], 1 << 20).Add(chunks[0].Chunk));         // unexpected name
        var truncated = new TensorAssembler(["hidden"], 1 << 20);
        truncated.Add(chunks[0].Chunk);
        Assert.Throws<WireException>(() => truncated.RequireComplete());
        var lying = new TensorAssembler(["hidden"], 1 << 20);
        lying.Add(chunks[0].Chunk);
        var early = chunks[1].Chunk.Clone();
        early.Last = true;
        Assert.Throws<WireException>(() => lying.Add(early));                                                  // ends short
    }

    [Fact]
    public void A_declared_size_is_not_allocated_before_the_bytes_arrive_and_growth_is_reported()
    {
        var reserved = new List<long>();
        var asm = new TensorAssembler(["hidden"], 1L << 30, reserve: reserved.Add);
        long before = GC.GetAllocatedBytesForCurrentThread();
        asm.Add(new TensorChunk { Name = "hidden", TotalBytes = 1L << 30, Part = Google.Protobuf.ByteString.CopyFrom(new byte[16]) });
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 4 << 20, "a 1 GiB promise must not allocate 1 GiB");
        Assert.Equal([1L << 20], reserved);

        // A real tensor in chunks: the reservations add up to the buffer it needed, and it reassembles.
        using var scope = NewDisposeScope();
        var t = randn(4, 3000, 64);   // ~3 MiB
        reserved.Clear();
        var whole = new TensorAssembler(["hidden"], 1L << 30, reserve: reserved.Add);
        foreach (var c in TensorChunks.Split("hidden", TensorCodec.Encode(t), chunkBytes: 256 << 10)) whole.Add(c.Chunk);
        whole.RequireComplete();
        Assert.True(TensorCodec.Decode(whole.Completed["hidden"], "hidden").equal(t).all().item<bool>());
        Assert.Equal(TensorCodec.Encode(t).CalculateSize(), reserved.Sum());
    }
}
