namespace PetalsSharp.Models.Kernels;

/// <summary>
/// A SwiGLU MLP on the fused path (Llama's MLP; each Mixtral expert): gate and up in one phase with
/// <c>silu(gate)·up</c> finished on the same slice, then down added to <see cref="FusedStep.Hidden"/>. Two phases.
/// </summary>
public sealed unsafe class FusedSwiGlu : IFusedMlp
{
    readonly FusedLinear _gate, _up, _down;

    FusedSwiGlu(FusedLinear gate, FusedLinear up, FusedLinear down) => (_gate, _up, _down) = (gate, up, down);

    /// <summary>Null when a weight cannot be read in place; the modules join <paramref name="modules"/> in order.</summary>
    public static FusedSwiGlu? From(BlockLinear gate, BlockLinear up, BlockLinear down, List<string> modules)
    {
        FusedLinear? Take(BlockLinear l)
        {
            modules.Add(l.Module);
            return FusedLinear.From(l, modules.Count - 1);
        }
        var (g, u, d) = (Take(gate), Take(up), Take(down));
        return g is null || u is null || d is null ? null : new FusedSwiGlu(g, u, d);
    }

    public void Prepare(FusedStep step)
    {
        step.Ensure(Slot.Gate, (long)MatRows.MaxRows * _gate.Out);
        step.Ensure(Slot.Up, (long)MatRows.MaxRows * _up.Out);
        step.Ensure(Slot.Out, (long)MatRows.MaxRows * _down.Out);
    }

    /// <summary><c>Hidden += down(silu(gate(normed)) · up(normed))</c>; <paramref name="normed"/> is <c>[R, H]</c>.</summary>
    public void Execute(FusedStep step, float* normed, int worker, int workers)
    {
        float* gate = step.Buffer(Slot.Gate), up = step.Buffer(Slot.Up), output = step.Buffer(Slot.Out);
        int width = _gate.Out, rows = step.Rows;
        var chunks = step.Claim(worker, width);
        while (chunks.Next(out int g0, out int g1))
        {
            _gate.Range(step, normed, rows, gate, g0, g1, worker);
            _up.Range(step, normed, rows, up, g0, g1, worker);
            for (int r = 0; r < rows; r++) RowKernels.SiluMul(gate + (long)r * width, up + (long)r * width, g0, g1);
        }
        step.Team.Barrier();
        var down = step.Claim(worker, _down.Out);
        while (down.Next(out int o0, out int o1))
        {
            _down.Range(step, gate, rows, output, o0, o1, worker);
            Residual.Add(step.Hidden, output, rows, _down.Out, o0, o1);
        }
    }

    /// <summary>Intermediate width I (gate and up outputs) and output width H (down's).</summary>
    public int Width => _gate.Out;
    public int OutWidth => _down.Out;

    /// <summary>
    /// The first half on a gathered subset of <paramref name="rows"/> rows (a Mixtral expert's): this worker's slice of
    /// <c>gate [n, I] = silu(gate(x)) · up(x)</c> for <c>x [n, H]</c>. No barrier inside, so a caller may run several
    /// experts in one phase; it puts one barrier before <see cref="DownRows"/>.
    /// </summary>
    public void UpRows(FusedStep step, float* x, int rows, float* gate, float* up, int worker, int workers)
    {
        int width = _gate.Out;
        var (g0, g1) = MatRows.Slice(width, worker, workers);
        _gate.Range(step, x, rows, gate, g0, g1, worker);
        _up.Range(step, x, rows, up, g0, g1, worker);
        for (int r = 0; r < rows; r++) RowKernels.SiluMul(gate + (long)r * width, up + (long)r * width, g0, g1);
    }

    /// <summary>The second half: this worker's slice of <c>y [n, H] = down(act [n, I])</c>, which it returns (no residual).</summary>
    public (int Start, int End) DownRows(FusedStep step, float* act, int rows, float* y, int worker, int workers)
    {
        var (o0, o1) = MatRows.Slice(_down.Out, worker, workers);
        _down.Range(step, act, rows, y, o0, o1, worker);
        return (o0, o1);
    }
}
