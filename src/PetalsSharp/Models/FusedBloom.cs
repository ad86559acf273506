using PetalsSharp.Models.Kernels;

namespace PetalsSharp.Models;

/// <summary>
/// The fused decode plan of a <see cref="BloomBlock"/>: LayerNorm, <see cref="FusedQkvAttention"/> with ALiBi (float32
/// slopes, unscaled), LayerNorm, the tanh-GELU <see cref="FusedGeluMlp"/>, both residuals. With
/// <c>apply_residual_connection_post_layernorm</c> each norm's output also becomes the residual stream.
/// </summary>
internal sealed unsafe class FusedBloom : IFusedBlock
{
    readonly FusedLayerNorm _inputNorm, _postNorm;
    readonly FusedQkvAttention _attention;
    readonly FusedGeluMlp _mlp;
    readonly bool _residualPostNorm;
    readonly List<string> _modules;

    FusedBloom(FusedLayerNorm inputNorm, FusedQkvAttention attention, FusedLayerNorm postNorm, FusedGeluMlp mlp, bool residualPostNorm, List<string> modules) =>
        (_inputNorm, _attention, _postNorm, _mlp, _residualPostNorm, _modules) = (inputNorm, attention, postNorm, mlp, residualPostNorm, modules);

    public IReadOnlyList<string> Modules => _modules;

    /// <summary>Null when a weight cannot be read in place.</summary>
    public static FusedBloom? From(BloomConfig c, Norm inputNorm, BlockLinear qkv, BlockLinear dense, Norm postNorm, BlockLinear up, BlockLinear down)
    {
        if (!FusedLayerNorm.Supports(inputNorm) || !FusedLayerNorm.Supports(postNorm)) return null;
        var modules = new List<string>();
        var attention = FusedQkvAttention.From(qkv, dense, c.NumHeads, c.NumHeads, c.HeadDim, rotary: null,
            new AlibiTerm(c.NumHeads, bfloat16: false, scale: 1.0), modules);
        var mlp = FusedGeluMlp.From(up, down, tanh: true, modules);
        return attention is null || mlp is null ? null
            : new FusedBloom(new FusedLayerNorm(inputNorm), attention, new FusedLayerNorm(postNorm), mlp, c.ApplyResidualConnectionPostLayernorm, modules);
    }

    public void Prepare(FusedStep step)
    {
        step.Ensure(Slot.Normed, (long)MatRows.MaxRows * _inputNorm.Width);
        _attention.Prepare(step);
        _mlp.Prepare(step, Slot.Out);
    }

    public void Execute(FusedStep step, int worker, int workers)
    {
        float* normed = step.Buffer(Slot.Normed);
        _inputNorm.Phase(step, step.Hidden, normed, worker, workers, intoResidual: _residualPostNorm);
        step.Team.Barrier();
        _attention.Execute(step, normed, worker, workers);
        step.Team.Barrier();
        _postNorm.Phase(step, step.Hidden, normed, worker, workers, intoResidual: _residualPostNorm);
        step.Team.Barrier();
        _mlp.Execute(step, normed, worker, workers);
    }
}
