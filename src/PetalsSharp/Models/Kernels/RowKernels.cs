using System.Numerics.Tensors;

namespace PetalsSharp.Models.Kernels;

/// <summary>
/// Single-row float32 pieces the fused blocks share: norms, rotary, activations and residual adds. They run inside a
/// team job on the caller's slice, allocate nothing and mirror the reference ops' arithmetic (f32 throughout).
/// </summary>
public static unsafe partial class RowKernels
{
    static Span<float> S(float* p, int n) => new(p, n);

    /// <summary>RMSNorm (<see cref="Ops.RmsNorm"/>): <c>y = w · (x / sqrt(mean(x²) + eps))</c>.</summary>
    public static void RmsNorm(float* x, float* weight, double eps, float* y, int n)
    {
        float meanSquare = TensorPrimitives.SumOfSquares(new ReadOnlySpan<float>(x, n)) / n;
        float scale = 1f / MathF.Sqrt(meanSquare + (float)eps);
        TensorPrimitives.Multiply(new ReadOnlySpan<float>(x, n), scale, S(y, n));
        TensorPrimitives.Multiply(new ReadOnlySpan<float>(y, n), new ReadOnlySpan<float>(weight, n), S(y, n));
    }

    /// <summary>
    /// HF rotary on one head <c>x [D]</c> in place (<c>rotate_half</c> pairs i with i + D/2), with this row's tables
    /// <c>cos, sin [D/2]</c> (HF's tables repeat each half).
    /// </summary>
    public static void Rotate(float* x, float* cos, float* sin, int headDim)
    {
        int half = headDim / 2;
        for (int i = 0; i < half; i++)
        {
            float a = x[i], b = x[i + half];
            x[i] = a * cos[i] + -b * sin[i];
            x[i + half] = b * cos[i] + a * sin[i];
        }
    }

    /// <summary><c>gate[i] = silu(gate[i]) · up[i]</c> for i in [o0, o1) (SwiGLU).</summary>
    public static void SiluMul(float* gate, float* up, int o0, int o1)
    {
        for (int i = o0; i < o1; i++)
        {
            float g = gate[i];
            gate[i] = g / (1f + MathF.Exp(-g)) * up[i];
        }
    }

    /// <summary><c>acc[i] += add[i]</c> for i in [o0, o1) (residuals).</summary>
    public static void AddInto(float* acc, float* add, int o0, int o1)
    {
        if (o1 > o0) TensorPrimitives.Add(new ReadOnlySpan<float>(acc + o0, o1 - o0), new ReadOnlySpan<float>(add + o0, o1 - o0), S(acc + o0, o1 - o0));
    }
}
