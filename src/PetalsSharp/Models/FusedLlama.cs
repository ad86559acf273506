using PetalsSharp.Models.Kernels;

namespace PetalsSharp.Models;

/// <summary>
/// The fused decode plan of a <see cref="LlamaBlock"/>: RMSNorm, <see cref="FusedRotaryAttention"/>, RMSNorm,
/// <see cref="FusedSwiGlu"/>, with both residuals, in one team run of eight phases. A family's plan only wires the
/// shared kernels together in its block's order.
/// </summary>
internal sealed unsafe class FusedLlama : IFusedBlock
{
    readonly FusedNorm _inputNorm, _postNorm;
    readonly FusedRotaryAttention _attention;
    readonly FusedSwiGlu _mlp;
    readonly List<string> _modules;

    FusedLlama(FusedNorm inputNorm, FusedRotaryAttention attention, FusedNorm postNorm, FusedSwiGlu mlp, List<string> modules) =>
        (_inputNorm, _attention, _postNorm, _mlp, _modules) = (inputNorm, attention, postNorm, mlp, modules);

    public IReadOnlyList<string> Modules => _modules;

    /// <summary>Null when a weight cannot be read in place or a norm is not RMSNorm.</summary>
    public static FusedLlama? From(Norm inputNorm, RotaryAttention attn, Norm postNorm, BlockLinear gate, BlockLinear up, BlockLinear down)
    {
        if (!FusedNorm.Supports(inputNorm) || !FusedNorm.Supports(postNorm)) return null;
        var modules = new List<string>();
        var attention = FusedRotaryAttention.From(attn, modules);
        var mlp = FusedSwiGlu.From(gate, up, down, modules);
        return attention is null || mlp is null ? null : new FusedLlama(new FusedNorm(inputNorm), attention, new FusedNorm(postNorm), mlp, modules);
    }

    public void Prepare(FusedStep step)
    {
        step.Ensure(Slot.Normed, (long)MatRows.MaxRows * _inputNorm.Width);
        _attention.Prepare(step);
        _mlp.Prepare(step);
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
        _mlp.Execute(step, normed, worker, workers);
    }
}
