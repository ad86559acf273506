using System.Numerics.Tensors;

namespace PetalsSharp.Models.Kernels;

// LayerNorm and the two GELUs of the dense families (Falcon, BLOOM), mirroring libtorch's CPU kernels.
public static unsafe partial class RowKernels
{
    /// <summary>
    /// LayerNorm (<see cref="Ops.LayerNorm"/>): <c>y = (x − mean) / sqrt(var + eps) · w (+ b)</c> with the biased
    /// variance, in f32 as libtorch computes it. <paramref name="bias"/> may be null; <paramref name="y"/> may alias
    /// nothing but itself.
    /// </summary>
    public static void LayerNorm(float* x, float* weight, float* bias, double eps, float* y, int n)
    {
        var xs = new ReadOnlySpan<float>(x, n);
        var ys = new Span<float>(y, n);
        float mean = TensorPrimitives.Sum(xs) / n;
        // Two passes (centre, then square) rather than E[x²] − mean²: no cancellation when the mean is large.
        TensorPrimitives.Subtract(xs, mean, ys);
        float variance = TensorPrimitives.SumOfSquares(ys) / n;
        float rstd = 1f / MathF.Sqrt(Math.Max(variance, 0f) + (float)eps);
        TensorPrimitives.Multiply(ys, rstd, ys);
        TensorPrimitives.Multiply(ys, new ReadOnlySpan<float>(weight, n), ys);
        if (bias is not null) TensorPrimitives.Add(ys, new ReadOnlySpan<float>(bias, n), ys);
    }

    /// <summary>
    /// Exact GELU (<c>F.gelu</c>, Falcon): <c>x/2 · (1 + erf(x/√2))</c> in place on [o0, o1), with the erf libtorch's
    /// vectorised CPU kernel uses (Abramowitz–Stegun 7.1.26, |error| ≤ 1.5e-7), so both paths round alike.
    /// </summary>
    public static void GeluErf(float* x, int o0, int o1)
    {
        for (int i = o0; i < o1; i++)
        {
            float v = x[i];
            x[i] = v * 0.5f * (1f + Erf(v * 0.70710678118654752f));
        }
    }

    /// <summary>erf as ATen's <c>Vectorized&lt;float&gt;::erf</c>: <c>sign(x)·(1 − t·P(t)·exp(−x²))</c>, <c>t = 1/(1 + p|x|)</c>.</summary>
    public static float Erf(float x)
    {
        float a = MathF.Abs(x);
        float t = 1f / MathF.FusedMultiplyAdd(0.3275911f, a, 1f);
        float r = MathF.FusedMultiplyAdd(1.061405429f, t, -1.453152027f);
        r = MathF.FusedMultiplyAdd(r, t, 1.421413741f);
        r = MathF.FusedMultiplyAdd(r, t, -0.284496736f);
        r = MathF.FusedMultiplyAdd(r, t, 0.254829592f);
        float e = MathF.FusedMultiplyAdd(-MathF.Exp(-(x * x)) * t, r, 1f);
        return MathF.CopySign(e, x);
    }

    /// <summary>
    /// BLOOM's GELU (<c>BloomBlock.GeluTanh</c>) in place on [o0, o1): <c>x·0.5·(1 + tanh(x·0.79788456·(1 + 0.044715·x·x)))</c>,
    /// each product rounded to f32 in the reference's order.
    /// </summary>
    public static void GeluTanh(float* x, int o0, int o1)
    {
        for (int i = o0; i < o1; i++)
        {
            float v = x[i];
            float inner = v * 0.79788456f * (1f + 0.044715f * v * v);
            x[i] = v * 0.5f * (1f + MathF.Tanh(inner));
        }
    }
}
