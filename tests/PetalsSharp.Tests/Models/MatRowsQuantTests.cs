using PetalsSharp.Models.Kernels;
using PetalsSharp.Models.Quant;
using Xunit;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// MatRows against block-quantized weights is pinned to <see cref="BlockQuant.Dequantize"/>: its product must equal a
/// double-precision product over the dequantized weights. The kernels compute in f32 (only the order of the additions
/// differs), so the bound is 1e-5 of Σ|w·x|, the scale of an f32 summation's rounding, plus the bias's own rounding.
/// </summary>
public sealed unsafe class MatRowsQuantTests
{
    static float[] Random(int n, int seed, float scale = 1f)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1) * scale).ToArray();
    }

    /// <summary>Packs a random [outF, inF] matrix; returns the packed bytes and the dequantized weights they stand for.</summary>
    static (byte[] Packed, float[] Weights) Matrix(QuantFormat format, int outF, int inF, int seed, float scale = 0.05f)
    {
        var values = Random(outF * inF, seed, scale);
        // Some rows of exact zeros (zero scales) and one of tiny weights (subnormal f16 scales) take the rare paths.
        if (outF > 6)
        {
            Array.Clear(values, 2 * inF, inF);
            for (int i = 0; i < inF; i++) values[5 * inF + i] *= 1e-4f;
        }
        var packed = new byte[outF * format.RowBytes(inF)];
        BlockQuant.Quantize(format, values, outF, inF, packed);
        var weights = new float[outF * inF];
        BlockQuant.Dequantize(format, packed, outF, inF, weights);
        return (packed, weights);
    }

    /// <summary>Asserts y[r, o] for o in [o0, o1) against the double product; everything else must be untouched (NaN).</summary>
    static void Check(float[] weights, float[] x, float[]? bias, float[] y, int rows, int outF, int inF, int ldy, int o0, int o1, string what)
    {
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < ldy; o++)
            {
                float got = y[r * ldy + o];
                if (o < o0 || o >= o1)
                {
                    Assert.True(float.IsNaN(got), $"{what}: y[{r}, {o}] outside [{o0}, {o1}) was written");
                    continue;
                }
                double sum = 0, magnitude = 0;
                for (int i = 0; i < inF; i++)
                {
                    double p = (double)weights[o * inF + i] * x[r * inF + i];
                    sum += p;
                    magnitude += Math.Abs(p);
                }
                if (bias is not null) sum += bias[o];
                double bound = 1e-5 * magnitude + (bias is null ? 0 : 1e-7 * Math.Abs(bias[o])) + 1e-30;
                if (Math.Abs(got - sum) > bound) Assert.Fail($"{what}: y[{r}, {o}] = {got}, expected {sum} (bound {bound:G3})");
            }
    }

    static void Run(QuantFormat format, int outF, int inF, int rows, bool withBias, int o0, int o1, int seed)
    {
        var (packed, weights) = Matrix(format, outF, inF, seed);
        var x = Random(rows * inF, seed + 1);
        var bias = withBias ? Random(outF, seed + 2) : null;
        int ldy = outF + 3;   // a row stride wider than the output: the gaps must stay untouched
        var y = Enumerable.Repeat(float.NaN, rows * ldy).ToArray();
        fixed (byte* wp = packed)
        fixed (float* xp = x, yp = y, bp = bias)
        {
            var w = WeightMatrix.Quantized(wp, format, outF, inF, exactActivations: true);
            MatRows.MultiplyRange(w, xp, rows, yp, ldy, bp, o0, o1);
        }
        Check(weights, x, bias, y, rows, outF, inF, ldy, o0, o1, $"{format} {outF}×{inF}, {rows} rows, bias {withBias}, [{o0}, {o1})");
    }

    public static IEnumerable<object[]> Shapes()
    {
        foreach (var format in new[] { QuantFormat.Int8, QuantFormat.Nf4 })
            foreach (var inF in new[] { 32, 64, 172, 768, 2048 + 17 })
                foreach (var outF in new[] { 13, 770 })
                    if (outF * inF <= 770 * 768)   // the largest shape runs in the sub-range test
                        yield return [format, outF, inF];
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Matches_the_dequantized_product_for_1_to_16_rows(QuantFormat format, int outF, int inF)
    {
        foreach (var rows in new[] { 1, 2, 3, 5, 16 })
            foreach (var withBias in new[] { false, true })
                Run(format, outF, inF, rows, withBias, 0, outF, seed: inF * 31 + outF + rows);
    }

    [Theory]
    [InlineData(QuantFormat.Int8)]
    [InlineData(QuantFormat.Nf4)]
    public void A_sub_range_of_a_large_matrix_writes_only_its_rows(QuantFormat format)
    {
        // Larger than a tile and a worker's chunk; [o0, o1) starts and ends off the 4-row tile grid.
        foreach (var (o0, o1) in new[] { (0, 770), (5, 770), (3, 418), (769, 770) })
            foreach (var rows in new[] { 1, 2, 5 })
                Run(format, 770, 2048 + 17, rows, withBias: rows != 2, o0, o1, seed: o0 + rows);
    }

    [Theory]
    [InlineData(QuantFormat.Int8)]
    [InlineData(QuantFormat.Nf4)]
    public void The_team_product_matches_the_dequantized_product(QuantFormat format)
    {
        const int outF = 1029, inF = 300;   // above MatRows.SerialWeights: split across the shared team
        var (packed, weights) = Matrix(format, outF, inF, 7);
        foreach (var rows in new[] { 1, 4 })
        {
            var x = Random(rows * inF, rows);
            var bias = Random(outF, 11);
            var y = new float[rows * outF];
            fixed (byte* wp = packed)
            fixed (float* xp = x, yp = y, bp = bias)
                MatRows.Multiply(WeightMatrix.Quantized(wp, format, outF, inF, exactActivations: true), xp, rows, yp, outF, bp, WorkerTeam.Shared);
            Check(weights, x, bias, y, rows, outF, inF, outF, 0, outF, $"{format} team, {rows} rows");
        }
    }

    [Fact]
    public void Fast_dequantize_equals_the_scalar_definition()
    {
        // The vectorized BlockQuant.Dequantize against d · q computed here from the format's description.
        foreach (var format in new[] { QuantFormat.Int8, QuantFormat.Nf4 })
        {
            const int outF = 9, inF = 200;
            var (packed, weights) = Matrix(format, outF, inF, 3);
            int rowBytes = format.RowBytes(inF), per = format.BlockValues();
            for (int o = 0; o < outF; o++)
                for (int i = 0; i < inF; i++)
                {
                    int block = o * rowBytes + i / per * QuantFormats.BlockBytes, j = i % per;
                    float d = (float)BitConverter.ToHalf(packed, block);
                    int q = format == QuantFormat.Int8
                        ? (sbyte)packed[block + 2 + j]
                        : BlockQuant.Nf4Codes[j < 32 ? packed[block + 2 + j] & 0xF : packed[block + 2 + j - 32] >> 4];
                    Assert.Equal(d * q, weights[o * inF + i]);
                }
        }
    }

    [Theory]
    [InlineData(13, 64)]
    [InlineData(770, 172)]
    [InlineData(770, 2048 + 17)]
    public void The_integer_nf4_dot_stays_within_the_activation_rounding(int outF, int inF)
    {
        // x is rounded to int8 per 64-value block (dx = absmax / 127), so each term moves by at most dx/2 · |w|:
        // the bound is Σ_blocks dx/2 · Σ|w| (times 1.001 for the f32 scales) plus the f32 summation's 1e-5 · Σ|w·x|.
        var (packed, weights) = Matrix(QuantFormat.Nf4, outF, inF, 5);
        var x = Random(inF, 9);
        x[inF / 2] = 3;   // an outlier: its block's other values lose precision, as real activations' do
        var bias = Random(outF, 4);
        var y = new float[outF];
        fixed (byte* wp = packed)
        fixed (float* xp = x, yp = y, bp = bias)
            MatRows.MultiplyRange(WeightMatrix.Quantized(wp, QuantFormat.Nf4, outF, inF), xp, 1, yp, outF, bp, 0, outF);
        for (int o = 0; o < outF; o++)
        {
            double sum = bias[o], magnitude = 0, rounding = 0;
            for (int b = 0; b * 64 < inF; b++)
            {
                double amax = 0, wabs = 0;
                for (int i = b * 64; i < Math.Min(inF, b * 64 + 64); i++)
                {
                    amax = Math.Max(amax, Math.Abs(x[i]));
                    wabs += Math.Abs(weights[o * inF + i]);
                    sum += (double)weights[o * inF + i] * x[i];
                    magnitude += Math.Abs((double)weights[o * inF + i] * x[i]);
                }
                rounding += amax / 127 / 2 * wabs;
            }
            double bound = 1.001 * rounding + 1e-5 * magnitude + 1e-7 * Math.Abs(bias[o]) + 1e-30;
            if (Math.Abs(y[o] - sum) > bound) Assert.Fail($"{outF}×{inF}: y[{o}] = {y[o]}, expected {sum} (bound {bound:G3})");
        }
    }

    /// <summary>
    /// The f32 scales beside a matrix (<see cref="WeightMatrix.Scales"/>) give the one-row integer kernels exactly the
    /// numbers the per-tile f16 conversion gives: bit for bit, with short last tiles, partial blocks, zero and
    /// subnormal scales, and output ranges that start inside a tile.
    /// </summary>
    [Theory]
    [InlineData("int8", 13, 64, 0)]
    [InlineData("int8", 770, 172, 3)]
    [InlineData("nf4", 13, 64, 0)]
    [InlineData("nf4", 770, 2048 + 17, 5)]
    [InlineData("nf4", 130, 768, 1)]
    public void Side_scales_give_the_same_bits_as_converting_them_per_tile(string name, int outF, int inF, int o0)
    {
        var format = QuantFormats.Parse(name);
        var (packed, _) = Matrix(format, outF, inF, 11);
        var x = Random(inF, 12);
        var bias = Random(outF, 13);
        var perTile = new float[outF];
        var side = new float[outF];
        using var packedTensor = TorchSharp.torch.tensor(packed, [outF, format.RowBytes(inF)]);
        using var scales = PackedLinear.BlockScales(packedTensor, format, inF);                  // [outF, blocks]
        var scaleValues = scales.data<float>().ToArray();
        fixed (byte* wp = packed)
        fixed (float* xp = x, bp = bias, a = perTile, b = side, sp = scaleValues)
        {
            MatRows.MultiplyRange(WeightMatrix.Quantized(wp, format, outF, inF), xp, 1, a, outF, bp, o0, outF);
            MatRows.MultiplyRange(WeightMatrix.Quantized(wp, format, outF, inF, scales: sp), xp, 1, b, outF, bp, o0, outF);
        }
        for (int o = o0; o < outF; o++)
            if (BitConverter.SingleToInt32Bits(perTile[o]) != BitConverter.SingleToInt32Bits(side[o]))
                Assert.Fail($"{name} {outF}×{inF}: y[{o}] = {side[o]} with side scales, {perTile[o]} converting per tile");
    }
}
