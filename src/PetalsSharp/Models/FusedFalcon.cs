using PetalsSharp.Models.Kernels;

namespace PetalsSharp.Models;

/// <summary>
/// The fused decode plan of a <see cref="FalconBlock"/>, every layout. Parallel (7B with one norm, 40B with
/// <c>ln_attn</c>/<c>ln_mlp</c> or one shared norm): the norms, then the q/k/v projection beside the MLP's up, the split
/// and cache append, attention, then both output projections on the same slice, added as the reference adds them
/// (<c>hidden + (mlp + attn)</c>): five phases. Sequential (7B, <c>parallel_attn</c> false): as Llama's, with LayerNorms
/// and a GELU MLP.
/// </summary>
internal sealed unsafe class FusedFalcon : IFusedBlock
{
    readonly FusedLayerNorm _attnNorm;
    readonly FusedLayerNorm? _mlpNorm;   // ln_mlp (parallel) or post_attention_layernorm (sequential); null when shared
    readonly FusedQkvAttention _attention;
    readonly FusedGeluMlp _mlp;
    readonly bool _parallel;
    readonly List<string> _modules;

    FusedFalcon(FusedLayerNorm attnNorm, FusedLayerNorm? mlpNorm, FusedQkvAttention attention, FusedGeluMlp mlp, bool parallel, List<string> modules) =>
        (_attnNorm, _mlpNorm, _attention, _mlp, _parallel, _modules) = (attnNorm, mlpNorm, attention, mlp, parallel, modules);

    public IReadOnlyList<string> Modules => _modules;

    /// <summary>Null when a weight cannot be read in place.</summary>
    public static FusedFalcon? From(FalconConfig c, Norm attnNorm, Norm? mlpNorm, Rotary? rotary,
        BlockLinear qkv, BlockLinear dense, BlockLinear up, BlockLinear down)
    {
        if (!FusedLayerNorm.Supports(attnNorm) || (mlpNorm is not null && !FusedLayerNorm.Supports(mlpNorm))) return null;
        if (!c.ParallelAttn && mlpNorm is null) throw new ArgumentException("a sequential Falcon block has a post-attention norm");
        var modules = new List<string>();
        // HF's Falcon ALiBi rounds to bfloat16 and scales the bias by 1/√D with the scores (see FalconBlock.Attention).
        var alibi = c.Alibi ? new AlibiTerm(c.NumHeads, bfloat16: true, scale: 1.0 / Math.Sqrt(c.HeadDim)) : null;
        var attention = FusedQkvAttention.From(qkv, dense, c.NumHeads, c.NumKvHeads, c.HeadDim, rotary, alibi, modules);
        var mlp = FusedGeluMlp.From(up, down, tanh: false, modules);
        if (attention is null || mlp is null) return null;
        return new FusedFalcon(new FusedLayerNorm(attnNorm), mlpNorm is null ? null : new FusedLayerNorm(mlpNorm),
            attention, mlp, c.ParallelAttn, modules);
    }

    public void Prepare(FusedStep step)
    {
        long rows = MatRows.MaxRows;
        step.Ensure(Slot.Normed, rows * _attnNorm.Width);
        if (_parallel && _mlpNorm is not null) step.Ensure(FusedQkvAttention.SecondNormSlot, rows * _attnNorm.Width);
        _attention.Prepare(step);
        _mlp.Prepare(step, _parallel ? FusedQkvAttention.MlpOutSlot : Slot.Out);
    }

    public void Execute(FusedStep step, int worker, int workers)
    {
        if (_parallel) Parallel(step, worker, workers);
        else Sequential(step, worker, workers);
    }

    void Parallel(FusedStep step, int worker, int workers)
    {
        float* normed = step.Buffer(Slot.Normed);
        float* mlpNormed = _mlpNorm is null ? normed : step.Buffer(FusedQkvAttention.SecondNormSlot);
        _attnNorm.Phase(step, step.Hidden, normed, worker, workers);
        _mlpNorm?.Phase(step, step.Hidden, mlpNormed, worker, workers);
        step.Team.Barrier();
        _attention.Project(step, normed, worker, workers);
        _mlp.Up(step, mlpNormed, worker, workers);
        step.Team.Barrier();
        _attention.Split(step, worker, workers);
        step.Team.Barrier();
        _attention.Attend(step, worker, workers);
        step.Team.Barrier();
        // Both projections are H wide, so every worker gets the same output slice of each and adds them with no barrier.
        var (o0, o1) = _attention.Output(step, worker, workers);
        _mlp.Down(step, FusedQkvAttention.MlpOutSlot, worker, workers);
        float* mlpOut = step.Buffer(FusedQkvAttention.MlpOutSlot);
        Residual.Add(mlpOut, step.Buffer(Slot.Out), step.Rows, _mlp.Width, o0, o1);
        Residual.Add(step.Hidden, mlpOut, step.Rows, _mlp.Width, o0, o1);
    }

    void Sequential(FusedStep step, int worker, int workers)
    {
        float* normed = step.Buffer(Slot.Normed);
        _attnNorm.Phase(step, step.Hidden, normed, worker, workers);
        step.Team.Barrier();
        _attention.Execute(step, normed, worker, workers);
        step.Team.Barrier();
        _mlpNorm!.Phase(step, step.Hidden, normed, worker, workers);
        step.Team.Barrier();
        _mlp.Execute(step, normed, worker, workers);
    }
}
