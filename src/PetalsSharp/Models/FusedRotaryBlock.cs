using PetalsSharp.Models.Kernels;

namespace PetalsSharp.Models;

/// <summary>
/// The fused decode plan of a <see cref="RotaryBlock"/>: RMSNorm, <see cref="FusedRotaryAttention"/> (within the
/// sliding window when the config sets one), RMSNorm, the family's <see cref="IFusedMlp"/>, with both residuals, in one
/// team run. A family (<see cref="FusedLlama"/>, <see cref="FusedMixtral"/>) only supplies the MLP.
/// </summary>
internal sealed unsafe class FusedRotaryBlock : IFusedBlock
{
    readonly FusedNorm _inputNorm, _postNorm;
    readonly FusedRotaryAttention _attention;
    readonly IFusedMlp _mlp;
    readonly List<string> _modules;

    FusedRotaryBlock(FusedNorm inputNorm, FusedRotaryAttention attention, FusedNorm postNorm, IFusedMlp mlp, List<string> modules) =>
        (_inputNorm, _attention, _postNorm, _mlp, _modules) = (inputNorm, attention, postNorm, mlp, modules);

    public IReadOnlyList<string> Modules => _modules;

    public bool GathersRows => _mlp is FusedMoe;

    /// <summary>
    /// Null when a weight cannot be read in place or a norm is not RMSNorm. <paramref name="mlp"/> builds the MLP's
    /// fused form, appending its linears to the module list after the attention's four (their adapter slots).
    /// </summary>
    public static FusedRotaryBlock? From(Norm inputNorm, RotaryAttention attn, Norm postNorm, Func<List<string>, IFusedMlp?> mlp)
    {
        if (!FusedNorm.Supports(inputNorm) || !FusedNorm.Supports(postNorm)) return null;
        var modules = new List<string>();
        var attention = FusedRotaryAttention.From(attn, modules);
        var fusedMlp = mlp(modules);
        return attention is null || fusedMlp is null
            ? null
            : new FusedRotaryBlock(new FusedNorm(inputNorm), attention, new FusedNorm(postNorm), fusedMlp, modules);
    }

    public void Prepare(FusedStep step)
    {
        step.Ensure(Slot.Normed, (long)MatRows.MaxRows * _inputNorm.Width);
        _attention.Prepare(step);
        _mlp.Prepare(step);
    }

    public void Execute(FusedStep step, int worker, int workers)
    {
        float* normed = step.Buffer(Slot.Normed);                              // [R, H]
        _inputNorm.Phase(step, step.Hidden, normed, worker, workers);
        step.Team.Barrier();
        _attention.Execute(step, normed, worker, workers);
        step.Team.Barrier();
        _postNorm.Phase(step, step.Hidden, normed, worker, workers);
        step.Team.Barrier();
        _mlp.Execute(step, normed, worker, workers);
    }
}
