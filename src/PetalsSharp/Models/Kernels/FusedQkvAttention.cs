namespace PetalsSharp.Models.Kernels;

/// <summary>
/// The attention half of a block with one fused <c>query_key_value</c> projection (Falcon, BLOOM) on the fused path:
/// the projection, the strided split of its rows into query heads and cache entries (rotated when the family has
/// rotary), attention over the cache (with ALiBi when it has that instead), and the output projection. Four phases;
/// a parallel block (Falcon) interleaves them with its MLP's, so each is public.
/// </summary>
/// <remarks>
/// Every layout the families use is a grouped one: per KV head, its G = heads / kvHeads query heads, then its k, then
/// its v, D floats each. Falcon 40B is that literally; Falcon 7B multi-query is G = heads (one group); BLOOM and Falcon
/// 7B multi-head are G = 1 (<c>[q, k, v]</c> per head).
/// </remarks>
public sealed unsafe class FusedQkvAttention
{
    /// <summary>Scratch slots beyond the shared ones: the projection's output, and a parallel block's second output.</summary>
    public const int QkvSlot = Slot.FirstFree, MlpOutSlot = Slot.FirstFree + 1, SecondNormSlot = Slot.FirstFree + 2;

    readonly FusedLinear _qkv, _dense;
    readonly Rotary? _rotary;
    readonly float[]? _fixedInverse;
    readonly AlibiTerm? _alibi;
    readonly int _heads, _kvHeads, _headDim;

    FusedQkvAttention(FusedLinear qkv, FusedLinear dense, int heads, int kvHeads, int headDim, Rotary? rotary, AlibiTerm? alibi)
    {
        (_qkv, _dense, _heads, _kvHeads, _headDim, _rotary, _alibi) = (qkv, dense, heads, kvHeads, headDim, rotary, alibi);
        if (rotary is not null) _fixedInverse = RotaryAppend.FixedInverse(rotary);
    }

    /// <summary>
    /// The fused form, its two linears appended to <paramref name="modules"/> (their index there is their adapter slot);
    /// null when a weight cannot be read in place. Exactly one of <paramref name="rotary"/> and <paramref name="alibi"/> is set.
    /// </summary>
    public static FusedQkvAttention? From(BlockLinear qkv, BlockLinear dense, int heads, int kvHeads, int headDim,
        Rotary? rotary, AlibiTerm? alibi, List<string> modules)
    {
        if ((rotary is null) == (alibi is null)) throw new ArgumentException("a block has either rotary or ALiBi");
        var (q, o) = (Take(qkv, modules), Take(dense, modules));
        return q is null || o is null || q.Out != (heads + 2 * kvHeads) * headDim ? null
            : new FusedQkvAttention(q, o, heads, kvHeads, headDim, rotary, alibi);
    }

    /// <summary>A linear on the fused path, registered as the next adapter module.</summary>
    public static FusedLinear? Take(BlockLinear linear, List<string> modules)
    {
        modules.Add(linear.Module);
        return FusedLinear.From(linear, modules.Count - 1);
    }

    /// <summary>Output width of the attention projection (H), the width <see cref="Output"/> writes.</summary>
    public int Width => _dense.Out;

    public void Prepare(FusedStep step)
    {
        long rows = MatRows.MaxRows;
        step.Ensure(QkvSlot, rows * _qkv.Out);
        step.Ensure(Slot.Q, rows * _heads * _headDim);
        step.Ensure(Slot.Attn, rows * _dense.In);
        step.Ensure(Slot.Out, rows * _dense.Out);
        if (_rotary is not null) RotaryAppend.Tables(step, _rotary, _fixedInverse);
        CacheAttention.Prepare(step, _heads / _kvHeads);
    }

    /// <summary>Phase 1: this worker's columns of <c>qkv [R, (heads + 2·kvH)·D] = query_key_value(normed [R, H])</c>.</summary>
    public void Project(FusedStep step, float* normed, int worker, int workers) =>
        _qkv.Phase(step, normed, step.Buffer(QkvSlot), worker);

    /// <summary>
    /// Phase 2: query heads to <c>q [R, heads·D]</c>, keys and values to the cache at [past, past+T), rotating q and k
    /// when the block has rotary (k where it was projected, before it is stored). One (row, head) per work item.
    /// </summary>
    public void Split(FusedStep step, int worker, int workers)
    {
        int d = _headDim, g = _heads / _kvHeads, perRow = _heads + _kvHeads, groupStride = (g + 2) * d, half = d / 2;
        float* qkv = step.Buffer(QkvSlot), q = step.Buffer(Slot.Q);
        float* cos = step.Buffer(Slot.Cos), sin = step.Buffer(Slot.Sin);
        var (i0, i1) = MatRows.Slice(step.Rows * perRow, worker, workers, align: 1);
        for (int item = i0; item < i1; item++)
        {
            int r = item / perRow, head = item % perRow;
            float* row = qkv + (long)r * _qkv.Out;
            float* c = cos + (long)r * half, s = sin + (long)r * half;
            if (head < _heads)
            {
                float* dst = q + ((long)r * _heads + head) * d;
                new ReadOnlySpan<float>(row + (head / g) * groupStride + (head % g) * d, d).CopyTo(new Span<float>(dst, d));
                if (_rotary is not null) RowKernels.Rotate(dst, c, s, d);
                continue;
            }
            int kvHead = head - _heads, b = r / step.Tokens, pos = step.PastOf(b) + r % step.Tokens, local = step.LocalRow(b);
            ref readonly var cache = ref step.PagesOf(b);
            float* group = row + (long)kvHead * groupStride + (long)g * d;   // its k, then its v
            // Rotated where it was projected (this step's scratch), then stored in the cache's format.
            if (_rotary is not null) RowKernels.Rotate(group, c, s, d);
            cache.WriteKey(local, pos, kvHead, group);
            cache.WriteValue(local, pos, kvHead, group + d);
        }
    }

    /// <summary>Phase 3: this worker's (batch row, head) items of attention over the cache into <c>attn [R, heads·D]</c>.</summary>
    public void Attend(FusedStep step, int worker, int workers)
    {
        float* q = step.Buffer(Slot.Q), attn = step.Buffer(Slot.Attn);
        CacheAttention.Phase(step, q, _heads * _headDim, _heads, slidingWindow: null, _alibi, attn, _dense.In, worker, workers);
    }

    /// <summary>Phase 4: this worker's columns of <c>out [R, H] = dense(attn)</c> in <see cref="Slot.Out"/>; returns them.</summary>
    public (int Start, int End) Output(FusedStep step, int worker, int workers) =>
        _dense.StaticPhase(step, step.Buffer(Slot.Attn), step.Buffer(Slot.Out), worker, workers);

    /// <summary>The four phases in sequence: <c>Hidden += dense(attention(normed))</c>; <paramref name="normed"/> is <c>[R, H]</c>.</summary>
    public void Execute(FusedStep step, float* normed, int worker, int workers)
    {
        Project(step, normed, worker, workers);
        step.Team.Barrier();
        Split(step, worker, workers);
        step.Team.Barrier();
        Attend(step, worker, workers);
        step.Team.Barrier();
        var (o0, o1) = Output(step, worker, workers);
        Residual.Add(step.Hidden, step.Buffer(Slot.Out), step.Rows, Width, o0, o1);
    }
}
