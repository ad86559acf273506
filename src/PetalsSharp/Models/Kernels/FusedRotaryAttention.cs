namespace PetalsSharp.Models.Kernels;

/// <summary>
/// The attention half of a rotary block (Llama, Mixtral) on the fused path, from normed rows to the residual:
/// q/k/v projections in one phase, rotary and the cache append, attention over the cache, then the output projection
/// added to <see cref="FusedStep.Hidden"/>. Four phases, three barriers.
/// </summary>
public sealed unsafe class FusedRotaryAttention
{
    readonly FusedLinear _q, _k, _v, _o;
    readonly Rotary _rotary;
    readonly float[]? _fixedInverse;
    readonly int _heads;
    readonly int? _slidingWindow;

    FusedRotaryAttention(FusedLinear q, FusedLinear k, FusedLinear v, FusedLinear o, RotaryAttention attn)
    {
        (_q, _k, _v, _o) = (q, k, v, o);
        (_rotary, _heads, _slidingWindow) = (attn.Rotary, attn.Heads, attn.SlidingWindow);
        _fixedInverse = RotaryAppend.FixedInverse(_rotary);
    }

    /// <summary>
    /// The fused form of <paramref name="attn"/>, its linears appended to <paramref name="modules"/> (their index there
    /// is their adapter slot); null when a weight cannot be read in place.
    /// </summary>
    public static FusedRotaryAttention? From(RotaryAttention attn, List<string> modules)
    {
        FusedLinear? Take(BlockLinear l)
        {
            modules.Add(l.Module);
            return FusedLinear.From(l, modules.Count - 1);
        }
        var (q, k, v, o) = (Take(attn.QProj), Take(attn.KProj), Take(attn.VProj), Take(attn.OProj));
        return q is null || k is null || v is null || o is null ? null : new FusedRotaryAttention(q, k, v, o, attn);
    }

    public void Prepare(FusedStep step)
    {
        long rows = MatRows.MaxRows;
        step.Ensure(Slot.Q, rows * _q.Out);
        step.Ensure(Slot.K, rows * _k.Out);
        step.Ensure(Slot.V, rows * _v.Out);
        step.Ensure(Slot.Attn, rows * _o.In);
        step.Ensure(Slot.Out, rows * _o.Out);
        RotaryAppend.Tables(step, _rotary, _fixedInverse);
        CacheAttention.Prepare(step, _q.Out / _k.Out);
    }

    /// <summary><c>Hidden += o_proj(attention(normed))</c>; <paramref name="normed"/> is <c>[R, H]</c>.</summary>
    public void Execute(FusedStep step, float* normed, int worker, int workers)
    {
        float* q = step.Buffer(Slot.Q), k = step.Buffer(Slot.K), v = step.Buffer(Slot.V);
        float* attn = step.Buffer(Slot.Attn), output = step.Buffer(Slot.Out);
        _q.Phase(step, normed, q, worker);
        _k.Phase(step, normed, k, worker);
        _v.Phase(step, normed, v, worker);
        step.Team.Barrier();
        RotaryAppend.Phase(step, q, k, v, _heads, rotate: true, worker, workers);
        step.Team.Barrier();
        CacheAttention.Phase(step, q, _q.Out, _heads, _slidingWindow, alibi: null, attn, _o.In, worker, workers);
        step.Team.Barrier();
        var chunks = step.Claim(worker, _o.Out);
        while (chunks.Next(out int o0, out int o1))
        {
            _o.Range(step, attn, step.Rows, output, o0, o1, worker);
            Residual.Add(step.Hidden, output, step.Rows, _o.Out, o0, o1);
        }
    }
}
