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
    /// <summary>Sizes the score buffers: a cache length per query head of a KV group, per worker.</summary>
    public static void Prepare(FusedStep step, int group) => step.Ensure(Slot.Scores, (long)step.Team.Size * step.MaxLength * Math.Max(1, group));

    /// <summary>
    /// This worker's share of <c>out [R, heads·D] = softmax(q kᵀ / √D (+ alibi)) v</c> for <c>q [R, heads·D]</c> (row
    /// stride <paramref name="ldq"/>), after the step's keys and values are in the cache. A work item is a KV head's
    /// group of query heads (split in parts only when there are fewer groups than workers, as with MQA), so every key
    /// and value is read from memory once for the whole group rather than once per query head.
    /// </summary>
    public static void Phase(FusedStep step, float* q, int ldq, int heads, int? slidingWindow, AlibiTerm? alibi,
        float* output, int ldo, int worker, int workers)
    {
        int d = step.Cache.HeadDim, kvHeads = step.Cache.KvHeads, group = heads / kvHeads, units = step.Batch * kvHeads;
        int parts = Math.Min(group, Math.Max(1, (workers + units - 1) / units)), per = (group + parts - 1) / parts;
        float* scores = step.Buffer(Slot.Scores) + (long)worker * step.MaxLength * group;
        var (i0, i1) = MatRows.Slice(units * parts, worker, workers, align: 1);
        for (int item = i0; item < i1; item++)
        {
            int b = item / (kvHeads * parts), kvHead = item / parts % kvHeads, part = item % parts;
            int h0 = kvHead * group + part * per, h1 = Math.Min((kvHead + 1) * group, h0 + per);
            for (int t = 0; t < step.Tokens && h0 < h1; t++)
            {
                long r = (long)b * step.Tokens + t;
                QueryGroup(q + r * ldq + h0 * d, h1 - h0, step.PagesOf(b), step.LocalRow(b), kvHead, step.PastOf(b) + t, step.PadOf(b),
                    slidingWindow, scores, step.MaxLength, output + r * ldo + h0 * d, alibi, h0);
            }
        }
    }

    /// <summary>
    /// One query head at absolute cache index <paramref name="qpos"/> of batch row <paramref name="row"/>;
    /// <paramref name="head"/> picks the <paramref name="alibi"/> slope when there is one.
    /// </summary>
    public static void Query(float* q, in KvPages cache, int row, int kvHead, int qpos, int pad, int? slidingWindow,
        float* scores, float* output, AlibiTerm? alibi = null, int head = 0) =>
        QueryGroup(q, 1, cache, row, kvHead, qpos, pad, slidingWindow, scores, 0, output, alibi, head);

    /// <summary>
    /// <paramref name="count"/> consecutive query heads <c>q [count, D]</c> that share KV head <paramref name="kvHead"/>,
    /// the first being <paramref name="head"/>; head h's scores live at <c>scores + h·scoreStride</c> and its output at
    /// <c>output + h·D</c>.
    /// </summary>
    public static void QueryGroup(float* q, int count, in KvPages cache, int row, int kvHead, int qpos, int pad, int? slidingWindow,
        float* scores, int scoreStride, float* output, AlibiTerm? alibi, int head)
    {
        int d = cache.HeadDim;
        int lo = slidingWindow is { } w ? Math.Max(0, qpos - w + 1) : 0, n = qpos - lo + 1;
        float scale = 1f / MathF.Sqrt(d);
        cache.DotKeys(q, count, row, kvHead, lo, qpos, scale, scores, scoreStride);
        Span<float> sums = count <= 128 ? stackalloc float[count] : new float[count];
        for (int h = 0; h < count; h++)
        {
            float* s = scores + (long)h * scoreStride;
            for (int j = lo; j < Math.Min(pad, qpos); j++) s[j - lo] = float.NegativeInfinity;   // left padding, but never the query itself
            // Added after the scaled dot, as the reference adds its bias: once per query, so no key loop tests for it.
            alibi?.AddTo(new Span<float>(s, n), head + h, lo, pad);
            // Vectorized softmax numerator: exp(-inf) is exactly 0, so masked tokens get weight 0, which AddValues skips.
            var weights = new Span<float>(s, n);
            TensorPrimitives.Subtract(weights, TensorPrimitives.Max(weights), weights);
            TensorPrimitives.Exp(weights, weights);
            sums[h] = TensorPrimitives.Sum(weights);
        }
        new Span<float>(output, count * d).Clear();
        cache.AddValues(scores, count, scoreStride, row, kvHead, lo, qpos, output);
        for (int h = 0; h < count; h++)
        {
            var outSpan = new Span<float>(output + (long)h * d, d);
            TensorPrimitives.Multiply(outSpan, 1f / sums[h], outSpan);
        }
    }
}
