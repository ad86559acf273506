namespace PetalsSharp.Models.Kernels;

/// <summary>
/// A GELU MLP on the fused path (Falcon: exact erf; BLOOM: tanh approximation): up with the activation finished on the
/// same slice, then down. Two phases; a parallel block (Falcon) runs them beside its attention's, so each is public.
/// </summary>
public sealed unsafe class FusedGeluMlp
{
    readonly FusedLinear _up, _down;
    readonly bool _tanh;

    FusedGeluMlp(FusedLinear up, FusedLinear down, bool tanh) => (_up, _down, _tanh) = (up, down, tanh);

    /// <summary>Null when a weight cannot be read in place; the modules join <paramref name="modules"/> in order.</summary>
    public static FusedGeluMlp? From(BlockLinear up, BlockLinear down, bool tanh, List<string> modules)
    {
        var (u, d) = (FusedQkvAttention.Take(up, modules), FusedQkvAttention.Take(down, modules));
        return u is null || d is null ? null : new FusedGeluMlp(u, d, tanh);
    }

    /// <summary>Output width of the MLP (H).</summary>
    public int Width => _down.Out;

    /// <param name="step">The session's step.</param>
    /// <param name="outputSlot">Where <see cref="Down"/> writes <c>[R, H]</c>.</param>
    public void Prepare(FusedStep step, int outputSlot)
    {
        step.Ensure(Slot.Up, (long)MatRows.MaxRows * _up.Out);
        step.Ensure(outputSlot, (long)MatRows.MaxRows * _down.Out);
    }

    /// <summary>Phase 1: this worker's columns of <c>up [R, F] = gelu(dense_h_to_4h(normed [R, H]))</c>.</summary>
    public void Up(FusedStep step, float* normed, int worker, int workers)
    {
        float* up = step.Buffer(Slot.Up);
        int width = _up.Out;
        var chunks = step.Claim(worker, width);
        while (chunks.Next(out int u0, out int u1))
        {
            _up.Range(step, normed, step.Rows, up, u0, u1, worker);
            for (int r = 0; r < step.Rows; r++)
            {
                if (_tanh) RowKernels.GeluTanh(up + (long)r * width, u0, u1);
                else RowKernels.GeluErf(up + (long)r * width, u0, u1);
            }
        }
    }

    /// <summary>Phase 2: this worker's columns of <c>out [R, H] = dense_4h_to_h(up)</c> in <paramref name="outputSlot"/>; returns them.</summary>
    public (int Start, int End) Down(FusedStep step, int outputSlot, int worker, int workers) =>
        _down.StaticPhase(step, step.Buffer(Slot.Up), step.Buffer(outputSlot), worker, workers);

    /// <summary>Both phases: <c>Hidden += mlp(normed)</c>, through <see cref="Slot.Out"/>.</summary>
    public void Execute(FusedStep step, float* normed, int worker, int workers)
    {
        Up(step, normed, worker, workers);
        step.Team.Barrier();
        var (o0, o1) = Down(step, Slot.Out, worker, workers);
        Residual.Add(step.Hidden, step.Buffer(Slot.Out), step.Rows, Width, o0, o1);
    }
}
