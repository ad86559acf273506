using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Models.Kernels;
using Xunit;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PetalsSharp.Tests.Models;

/// <summary>The C# decode kernels (MatRows behind Ops.Linear) are pinned to F.linear, alone and inside a whole model.</summary>
public sealed class MatRowsTests
{
    [Theory]
    [InlineData(ScalarType.Float32, false)]
    [InlineData(ScalarType.Float32, true)]
    [InlineData(ScalarType.BFloat16, false)]
    [InlineData(ScalarType.BFloat16, true)]
    [InlineData(ScalarType.BFloat16, true, true)]
    [InlineData(ScalarType.Float16, false)]
    [InlineData(ScalarType.Float16, true)]
    [InlineData(ScalarType.Float16, true, true)]
    public void Matches_F_linear_for_1_to_16_rows(ScalarType dtype, bool withBias, bool halfBias = false) =>
        CheckAgainstLinear(dtype, withBias, halfBias);

    /// <summary>
    /// Where the 512-bit tiles run by default, the 256-bit ones (what a machine without AVX-512 runs) still match.
    /// Switching the global only picks another correct kernel, so tests running meanwhile are unaffected.
    /// </summary>
    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float16)]
    public void The_256_bit_tiles_match_F_linear_too(ScalarType dtype)
    {
        bool wide = MatRows.UseWideTiles, v512 = MatRows.UseVector512;
        MatRows.UseWideTiles = false;
        MatRows.UseVector512 = false;
        try
        {
            CheckAgainstLinear(dtype, withBias: true, halfBias: false);
        }
        finally
        {
            MatRows.UseWideTiles = wide;
            MatRows.UseVector512 = v512;
        }
    }

    /// <summary>One-row f32 products stream rows in address order; the four-row tiles they replaced stay a benchmark's A/B.</summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void The_four_row_f32_tiles_match_F_linear_too(bool v512)
    {
        bool stream = MatRows.UseRowStream, saved = MatRows.UseVector512;
        (MatRows.UseRowStream, MatRows.UseVector512) = (false, v512);
        try
        {
            CheckAgainstLinear(ScalarType.Float32, withBias: true, halfBias: false);
        }
        finally
        {
            (MatRows.UseRowStream, MatRows.UseVector512) = (stream, saved);
        }
    }

    static void CheckAgainstLinear(ScalarType dtype, bool withBias, bool halfBias)
    {
        using var scope = NewDisposeScope();
        manual_seed(3);
        // 517 output rows: not a multiple of the 4-row tile nor of a worker's 8-row slice; 771 inputs: not a multiple
        // of the 8-wide vector, so every tail runs. The small shape runs on the calling thread alone.
        foreach (var (outF, inF) in new[] { (517, 771), (13, 37) })
        {
            var w = randn(outF, inF).to(dtype);                                // [out, in]
            // A 16-bit bias (BLOOM's, stored in bf16) must stay on the fast path: it is upcast, not declined.
            var b = withBias ? (halfBias ? randn(outF).to(dtype) : randn(outF)) : null;   // [out]
            for (int rows = 1; rows <= MatRows.MaxRows; rows++)
            {
                var x = randn(1, rows, inF);                                    // [1, rows, in]
                Assert.True(MatRowsLinear.TryLinear(x, w, b, out var fast));    // [1, rows, out]
                var reference = F.linear(x, w.to(ScalarType.Float32), b?.to(ScalarType.Float32));
                TensorAssert.Close(reference, fast, 1e-4, 1e-4, $"{dtype} {outF}x{inF}, {rows} rows");
            }
        }
    }

    [Fact]
    public unsafe void F16_weights_convert_exactly_for_every_value()
    {
        // One weight row per 16-bit pattern, in the first column of an otherwise zero row (times an activation of 1).
        var values = Enumerable.Range(0, 1 << 16).Select(i => (ushort)i).ToArray();
        const int cols = 8;
        var weights = new ushort[values.Length * cols];
        for (int i = 0; i < values.Length; i++) weights[i * cols] = values[i];
        var x = new float[2 * cols];
        x[0] = 1;
        x[cols] = 1;
        fixed (ushort* wp = weights)
        fixed (float* xp = x)
        {
            var w = new WeightMatrix(wp, WeightType.F16, values.Length, cols);
            foreach (var rows in new[] { 1, 2 })   // one row converts in registers, two go through the f32 tile
            {
                var y = new float[rows * values.Length];
                fixed (float* yp = y) MatRows.MultiplyRange(w, xp, rows, yp, values.Length, null, 0, values.Length);
                for (int r = 0; r < rows; r++)
                    for (int i = 0; i < values.Length; i++)
                    {
                        float expected = (float)BitConverter.UInt16BitsToHalf(values[i]), got = y[r * values.Length + i];
                        if (got != expected && !(float.IsNaN(expected) && float.IsNaN(got))) Assert.Fail($"half 0x{values[i]:X4}, {rows} rows: got {got}, expected {expected}");
                    }
            }
        }
    }

    [Fact]
    public void Declines_what_it_cannot_do()
    {
        using var scope = NewDisposeScope();
        var w = randn(512, 512);
        Assert.False(MatRowsLinear.TryLinear(randn(17, 1, 512), w, null, out _));                    // more than 16 rows
        Assert.False(MatRowsLinear.TryLinear(randn(1, 1, 512).requires_grad_(), w, null, out _));     // autograd needs F.linear
        Assert.False(MatRowsLinear.TryLinear(randn(1, 1, 512), w.t(), null, out _));                  // not contiguous
        Assert.False(MatRowsLinear.TryLinear(randn(1, 1, 512, ScalarType.Float64), w, null, out _));  // not f32 activations
        Assert.False(MatRowsLinear.TryLinear(randn(1, 1, 512), w.to(ScalarType.Float64), null, out _));
        using (MatRowsLinear.Disable()) Assert.False(MatRowsLinear.TryLinear(randn(1, 1, 512), w, null, out _));
        Assert.True(MatRowsLinear.TryLinear(randn(1, 1, 512), w, null, out _));
        Assert.True(MatRowsLinear.TryLinear(randn(2, 8, 512), w, null, out _));                        // 16 rows in all
    }

    [Fact]
    public async Task Whole_model_decode_is_the_same_with_and_without_it()
    {
        var dir = Path.Combine(Directory.CreateTempSubdirectory("petals-matrows").FullName, "m");
        var config = new LlamaConfig
        {
            ModelType = "llama", VocabSize = 512, HiddenSize = 256, NumLayers = 2, NumHeads = 4, NumKvHeads = 2,
            HeadDim = 64, IntermediateSize = 512, RmsNormEps = 1e-5, EosTokenIds = [511],
        };
        RandomCheckpoint.Write(config, dir, seed: 5);
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16, ScalarType.Float16 })
        {
            using var lm = CausalLM.Load(dir, new ModelLoadOptions(dtype));
            var opts = new GenerationOptions { MaxNewTokens = 16, IgnoreEos = true, HiddenStateLayers = [2] };
            var fast = await lm.GenerateAsync([[1, 2, 3, 4]], opts);
            GenerationResult slow;
            using (MatRowsLinear.Disable()) slow = await lm.GenerateAsync([[1, 2, 3, 4]], opts);
            Assert.Equal(slow.NewTokens, fast.NewTokens);
            TensorAssert.Close(slow.HiddenStates[2], fast.HiddenStates[2], 1e-4, 1e-4, $"last hidden state ({dtype})");
        }
    }
}
