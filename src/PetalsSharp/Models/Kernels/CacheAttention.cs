using System.Numerics.Tensors;

namespace PetalsSharp.Models.Kernels;

/// <summary>
/// Attention of the step's queries over the KV cache, one (batch row, query head) per work item, as
/// <see cref="Ops.Attention"/> computes it: causal, left padding hidden (a query always sees itself), an optional
/// sliding window, an optional ALiBi term on every score (BLOOM, Falcon with <c>alibi</c>), grouped-query heads sharing
/// a KV head. Scores live in the worker's slice of <see cref="Slot.Scores"/>.
/// </summary>
public static unsafe class CacheAttention
{
    /// <summary>Sizes the score buffers: one cache length per worker.</summary>
    public static void Prepare(FusedStep step) => step.Ensure(Slot.Scores, (long)step.Team.Size * step.MaxLength);

    /// <summary>
    /// This worker's share of <c>out [R, heads·D] = softmax(q kᵀ / √D (+ alibi)) v</c> for <c>q [R, heads·D]</c> (row
    /// stride <paramref name="ldq"/>), after the step's keys and values are in the cache.
    /// </summary>
    public static void Phase(FusedStep step, float* q, int ldq, int heads, int? slidingWindow, AlibiTerm? alibi,
        float* output, int ldo, int worker, int workers)
    {
        int d = step.Cache.HeadDim, group = heads / step.Cache.KvHeads;
        float* scores = step.Buffer(Slot.Scores) + (long)worker * step.MaxLength;
        var (i0, i1) = MatRows.Slice(step.Batch * heads, worker, workers, align: 1);
        for (int item = i0; item < i1; item++)
        {
            int b = item / heads, head = item % heads;
            for (int t = 0; t < step.Tokens; t++)
            {
                long r = (long)b * step.Tokens + t;
                Query(q + r * ldq + head * d, step.PagesOf(b), step.LocalRow(b), head / group, step.PastOf(b) + t, step.PadOf(b), slidingWindow, scores,
                    output + r * ldo + head * d, alibi, head);
            }
        }
    }

    /// <summary>
    /// One query head at absolute cache index <paramref name="qpos"/> of batch row <paramref name="row"/>;
    /// <paramref name="head"/> picks the <paramref name="alibi"/> slope when there is one.
    /// </summary>
    public static void Query(float* q, in KvPages cache, int row, int kvHead, int qpos, int pad, int? slidingWindow,
        float* scores, float* output, AlibiTerm? alibi = null, int head = 0)
    {
        int d = cache.HeadDim;
        int lo = slidingWindow is { } w ? Math.Max(0, qpos - w + 1) : 0, n = qpos - lo + 1;
        float scale = 1f / MathF.Sqrt(d);
        cache.DotKeys(q, row, kvHead, lo, qpos, scale, scores);
        for (int j = lo; j < Math.Min(pad, qpos); j++) scores[j - lo] = float.NegativeInfinity;
        // Added after the scaled dot, as the reference adds its bias: once per query, so no key loop tests for it.
        alibi?.AddTo(new Span<float>(scores, n), head, lo, pad);
        float max = float.NegativeInfinity;
        for (int i = 0; i < n; i++)
            if (scores[i] > max) max = scores[i];
        var outSpan = new Span<float>(output, d);
        outSpan.Clear();
        float sum = 0;
        for (int i = 0; i < n; i++)
        {
            // exp(-inf) is exactly 0: masked tokens get weight 0, which AddValues skips.
            float p = float.IsNegativeInfinity(scores[i]) ? 0f : MathF.Exp(scores[i] - max);
            sum += p;
            scores[i] = p;
        }
        cache.AddValues(scores, row, kvHead, lo, qpos, output);
        TensorPrimitives.Multiply(outSpan, 1f / sum, outSpan);
    }
}
