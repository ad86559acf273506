using PetalsSharp.Models;
using PetalsSharp.Models.Kernels;
using Xunit;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PetalsSharp.Tests.Models;

/// <summary>The dense families' row kernels against the TorchSharp ops the reference blocks use, element by element.</summary>
public sealed unsafe class DenseKernelTests
{
    static float[] Values(Tensor t) => t.contiguous().data<float>().ToArray();

    [Fact]
    public void Gelu_kernels_match_the_reference_activations()
    {
        using var scope = NewDisposeScope();
        var x = cat([linspace(-12, 12, 4001), randn(2000, generator: new Generator(3)) * 4]).to(ScalarType.Float32);   // [N]
        var erf = Values(x);
        var tanh = Values(x);
        fixed (float* e = erf, t = tanh)
        {
            RowKernels.GeluErf(e, 0, erf.Length);
            RowKernels.GeluTanh(t, 0, tanh.Length);
        }
        var erfRef = Values(F.gelu(x));
        var tanhRef = Values(BloomBlock.GeluTanh(x));
        // libtorch's CPU erf differs from the exact one by up to ~1e-6 in the tails (1e-6 · |x| after the product);
        // the kernel's own error is ~1.5e-7, so the gap is the reference's rounding, not a formula mismatch.
        AssertClose(erf, erfRef, 2e-6, "gelu");
        AssertClose(tanh, tanhRef, 1e-6, "gelu_tanh");
    }

    static void AssertClose(float[] actual, float[] expected, double tolerance, string what)
    {
        int worst = 0;
        for (int i = 1; i < actual.Length; i++)
            if (Math.Abs(actual[i] - expected[i]) > Math.Abs(actual[worst] - expected[worst])) worst = i;
        double diff = Math.Abs(actual[worst] - expected[worst]);
        Assert.True(diff <= tolerance, $"{what}: worst element {worst} differs by {diff} ({actual[worst]} vs {expected[worst]})");
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void LayerNorm_matches_the_reference(bool withBias)
    {
        using var scope = NewDisposeScope();
        var g = new Generator(5);
        var x = randn(3, 200, generator: g) * 3 + 7;                        // [R, H], a large mean on purpose
        var w = randn(200, generator: g);                                     // [H]
        var b = withBias ? randn(200, generator: g) : null;                   // [H]
        var expected = Values(Ops.LayerNorm(x, w, b, 1e-5));
        var input = Values(x);
        var (weight, bias) = (Values(w), b is null ? null : Values(b));
        var actual = new float[input.Length];
        fixed (float* px = input, pw = weight, pb = bias, py = actual)
            for (int r = 0; r < 3; r++) RowKernels.LayerNorm(px + r * 200, pw, pb, 1e-5, py + r * 200, 200);
        for (int i = 0; i < actual.Length; i++) Assert.True(Math.Abs(actual[i] - expected[i]) <= 2e-6, $"{i}: {actual[i]} vs {expected[i]}");
    }

    [Theory]
    [InlineData(12, false, 1.0)]
    [InlineData(5, false, 1.0)]
    [InlineData(6, true, 0.125)]
    public void Alibi_term_matches_the_reference_bias(int heads, bool bfloat16, double scale)
    {
        using var scope = NewDisposeScope();
        var ctx = new StepContext(2, 3, pastLength: 300, leftPadding: [0, 4]);
        var bias = Alibi.Bias(ctx, heads, ScalarType.Float32, bfloat16, scale);   // [B, heads, T, S]
        var values = Values(bias);
        int t = ctx.NewTokens, s = ctx.TotalLength;
        var term = new AlibiTerm(heads, bfloat16, scale);
        for (int b = 0; b < 2; b++)
            for (int h = 0; h < heads; h++)
                for (int j = 0; j < s; j++)
                {
                    float expected = values[((b * heads + h) * t + t - 1) * s + j];
                    Assert.Equal(expected, term.Bias(h, Math.Max(0, j - (b == 0 ? 0 : 4))));
                }
    }
}
