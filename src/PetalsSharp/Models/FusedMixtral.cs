using PetalsSharp.Models.Kernels;

namespace PetalsSharp.Models;

/// <summary>
/// The fused decode plan of a <see cref="MixtralBlock"/>: RMSNorm, <see cref="FusedRotaryAttention"/> (within the
/// sliding window when the config sets one), RMSNorm, <see cref="FusedMoe"/>, with both residuals, in one team run.
/// The adapter slots are the attention's four linears, the router, then each expert's w1, w3, w2, so a LoRA on the
/// router or the experts is applied as low-rank products on the fused path like any other module's.
/// </summary>
internal sealed unsafe class FusedMixtral : IFusedBlock
{
    readonly FusedNorm _inputNorm, _postNorm;
    readonly FusedRotaryAttention _attention;
    readonly FusedMoe _moe;
    readonly List<string> _modules;

    FusedMixtral(FusedNorm inputNorm, FusedRotaryAttention attention, FusedNorm postNorm, FusedMoe moe, List<string> modules) =>
        (_inputNorm, _attention, _postNorm, _moe, _modules) = (inputNorm, attention, postNorm, moe, modules);

    public IReadOnlyList<string> Modules => _modules;

    /// <summary>Null when a weight cannot be read in place or a norm is not RMSNorm.</summary>
    public static FusedMixtral? From(Norm inputNorm, RotaryAttention attn, Norm postNorm, SparseMoe moe)
    {
        if (!FusedNorm.Supports(inputNorm) || !FusedNorm.Supports(postNorm)) return null;
        var modules = new List<string>();
        var attention = FusedRotaryAttention.From(attn, modules);
        var experts = Enumerable.Range(0, moe.NumExperts).Select(e => moe.Expert(e).Linears).ToArray();
        var fusedMoe = FusedMoe.From(moe.Router, experts, moe.TopK, modules);
        return attention is null || fusedMoe is null
            ? null
            : new FusedMixtral(new FusedNorm(inputNorm), attention, new FusedNorm(postNorm), fusedMoe, modules);
    }

    public void Prepare(FusedStep step)
    {
        step.Ensure(Slot.Normed, (long)MatRows.MaxRows * _inputNorm.Width);
        _attention.Prepare(step);
        _moe.Prepare(step);
    }

    public void Execute(FusedStep step, int worker, int workers)
    {
        float* normed = step.Buffer(Slot.Normed);
        _inputNorm.Phase(step, step.Hidden, normed, worker, workers);
        step.Team.Barrier();
        _attention.Execute(step, normed, worker, workers);
        step.Team.Barrier();
        _postNorm.Phase(step, step.Hidden, normed, worker, workers);
        step.Team.Barrier();
        _moe.Execute(step, normed, worker, workers);
    }
}
