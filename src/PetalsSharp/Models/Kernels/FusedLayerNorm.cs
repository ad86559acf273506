namespace PetalsSharp.Models.Kernels;

/// <summary>
/// A LayerNorm (weight and optional bias) over the hidden rows, the rows split across workers: Falcon's and BLOOM's
/// norms, as <see cref="FusedNorm"/> is Llama's RMSNorm.
/// </summary>
public sealed unsafe class FusedLayerNorm(Norm norm)
{
    readonly PinnedVector _weight = new(norm.Weight);
    readonly PinnedVector? _bias = PinnedVector.Of(norm.Bias);
    readonly double _eps = norm.Eps;

    public static bool Supports(Norm norm) => !norm.IsRms;

    /// <summary>Hidden size H.</summary>
    public int Width => _weight.Length;

    /// <summary>
    /// <c>y [R, H] = norm(x [R, H])</c>, this worker's rows. With <paramref name="intoResidual"/> the normed row also
    /// replaces <paramref name="x"/>'s (BLOOM's <c>apply_residual_connection_post_layernorm</c>: the residual stream
    /// carries the normed input); only this worker touches its rows, so no barrier is needed in between.
    /// </summary>
    public void Phase(FusedStep step, float* x, float* y, int worker, int workers, bool intoResidual = false)
    {
        int h = _weight.Length;
        float* bias = _bias is null ? null : _bias.Pointer;
        var (r0, r1) = MatRows.Slice(step.Rows, worker, workers, align: 1);
        for (int r = r0; r < r1; r++)
        {
            float* row = y + (long)r * h;
            RowKernels.LayerNorm(x + (long)r * h, _weight.Pointer, bias, _eps, row, h);
            if (intoResidual) new ReadOnlySpan<float>(row, h).CopyTo(new Span<float>(x + (long)r * h, h));
        }
    }
}
