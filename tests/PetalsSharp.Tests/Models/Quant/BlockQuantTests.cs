using PetalsSharp.Models.Quant;
using Xunit;

namespace PetalsSharp.Tests.Models.Quant;

public class BlockQuantTests
{
    static float[] Random(int n, int seed, float scale = 1f)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1) * scale).ToArray();
    }

    [Theory]
    [InlineData(QuantFormat.Int8, 1)]
    [InlineData(QuantFormat.Int8, 32)]
    [InlineData(QuantFormat.Int8, 172)]
    [InlineData(QuantFormat.Int8, 768)]
    [InlineData(QuantFormat.Nf4, 1)]
    [InlineData(QuantFormat.Nf4, 64)]
    [InlineData(QuantFormat.Nf4, 172)]
    [InlineData(QuantFormat.Nf4, 768)]
    public void RoundTripStaysWithinHalfAStep(QuantFormat format, int inFeatures)
    {
        const int rows = 5;
        var w = Random(rows * inFeatures, inFeatures);
        var packed = new byte[rows * format.RowBytes(inFeatures)];
        BlockQuant.Quantize(format, w, rows, inFeatures, packed);
        var back = new float[w.Length];
        BlockQuant.Dequantize(format, packed, rows, inFeatures, back);
        int per = format.BlockValues();
        for (int r = 0; r < rows; r++)
            for (int b = 0; b * per < inFeatures; b++)
            {
                var block = w.AsSpan(r * inFeatures + b * per, Math.Min(per, inFeatures - b * per));
                float amax = 0;
                foreach (var v in block) amax = Math.Max(amax, Math.Abs(v));
                // Int8: half a step of amax/127 (plus the f16 scale's rounding). NF4: half the widest gap between
                // neighbouring codes (-127 → -88 is 39/127 of amax).
                float bound = format == QuantFormat.Int8 ? amax / 127 * 0.51f + amax * 1e-3f : amax * 39 / 127 * 0.51f + amax * 1e-3f;
                for (int i = 0; i < block.Length; i++)
                    Assert.True(Math.Abs(block[i] - back[r * inFeatures + b * per + i]) <= bound,
                        $"row {r} block {b} value {i}: {block[i]} came back as {back[r * inFeatures + b * per + i]}");
            }
    }

    [Fact]
    public void TheLargestMagnitudeOfABlockIsKeptAndZerosStayZero()
    {
        foreach (var format in new[] { QuantFormat.Int8, QuantFormat.Nf4 })
        {
            var w = new float[100];
            w[3] = -2.5f;
            w[40] = 0.75f;
            var packed = new byte[format.RowBytes(100)];
            BlockQuant.Quantize(format, w, 1, 100, packed);
            var back = new float[100];
            BlockQuant.Dequantize(format, packed, 1, 100, back);
            Assert.Equal(-2.5f, back[3], 2.5f * 1e-3f);
            Assert.Equal(0f, back[0]);
            Assert.Equal(0f, back[99]);
        }
    }

    [Fact]
    public void SizesFollowTheFormat()
    {
        Assert.Equal(6 * 34, QuantFormat.Int8.RowBytes(172));
        Assert.Equal(3 * 34, QuantFormat.Nf4.RowBytes(172));
        Assert.Equal(8.5, QuantFormat.Int8.BitsPerWeight());
        Assert.Equal(4.25, QuantFormat.Nf4.BitsPerWeight());
        Assert.Equal(9.5, QuantFormat.Int8.ResidentBitsPerWeight());   // with the f32 side scales the kernels read
        Assert.Equal(4.75, QuantFormat.Nf4.ResidentBitsPerWeight());
        Assert.Equal(QuantFormat.Nf4, QuantFormats.Parse("NF4"));
        Assert.Equal("int8", QuantFormats.Parse("q8_0").Name());
        var e = Assert.Throws<ArgumentException>(() => QuantFormats.Parse("int3"));
        Assert.Contains("none, int8 or nf4", e.Message);
    }

    [Fact]
    public void NonFiniteWeightsAreRefused()
    {
        var w = new float[32];
        w[7] = float.NaN;
        var e = Assert.Throws<ArgumentException>(() => BlockQuant.Quantize(QuantFormat.Int8, w, 1, 32, new byte[34]));
        Assert.Contains("NaN", e.Message);
    }
}
