using System.Numerics.Tensors;

namespace PetalsSharp.Models.Kernels;

/// <summary>
/// The ALiBi term of one family, as <see cref="Alibi.Bias"/> builds it: <c>slope_h · position(key) · scale</c>, where a
/// key's position counts from its row's first real token (clamped at 0 inside the padding). Falcon's HF port rounds
/// the slopes, the positions and their products to bfloat16 and scales by 1/√D; BLOOM stays in float32, unscaled.
/// </summary>
public sealed class AlibiTerm
{
    readonly float[] _slopes;   // [heads], already rounded when bfloat16
    readonly bool _bfloat16;
    readonly float _scale;

    public AlibiTerm(int heads, bool bfloat16, double scale)
    {
        _slopes = Alibi.Slopes(heads);
        if (bfloat16)
            for (int i = 0; i < _slopes.Length; i++) _slopes[i] = RoundBf16(_slopes[i]);
        (_bfloat16, _scale) = (bfloat16, (float)scale);   // a scalar multiplies a float32 tensor in float32
    }

    /// <summary>The additive score term of a key at <paramref name="position"/> (already counted from the row's first real token) for <paramref name="head"/>.</summary>
    public float Bias(int head, int position)
    {
        float slope = _slopes[head];
        float b = _bfloat16 ? RoundBf16(slope * RoundBf16(position)) : slope * position;
        return _scale == 1f ? b : b * _scale;
    }

    /// <summary>Round to nearest even at bfloat16's 8 mantissa bits, as <c>.to(bfloat16)</c> does.</summary>
    public static float RoundBf16(float f)
    {
        if (float.IsNaN(f)) return f;
        uint bits = BitConverter.SingleToUInt32Bits(f);
        bits += 0x7FFFu + ((bits >> 16) & 1u);
        return BitConverter.UInt32BitsToSingle(bits & 0xFFFF0000u);
    }
}

/// <summary>
/// <see cref="CacheAttention"/> with an ALiBi term added to every score (BLOOM, Falcon with <c>alibi</c>): causal, left
/// padding hidden (a query always sees itself), one (batch row, query head) per work item, grouped heads sharing a KV head.
/// </summary>
public static unsafe class AlibiAttention
{
    /// <summary>
    /// This worker's share of <c>out [R, heads·D] = softmax(q kᵀ / √D + alibi) v</c> for <c>q [R, heads·D]</c> (row stride
    /// <paramref name="ldq"/>), after the step's keys and values are in the cache. Scores use <see cref="Slot.Scores"/>
    /// as <see cref="CacheAttention.Prepare"/> sized it.
    /// </summary>
    public static void Phase(FusedStep step, float* q, int ldq, int heads, AlibiTerm alibi, float* output, int ldo, int worker, int workers)
    {
        var cache = step.Cache;
        int d = cache.HeadDim, group = heads / cache.KvHeads;
        float* scores = step.Buffer(Slot.Scores) + (long)worker * cache.MaxLength;
        var (i0, i1) = MatRows.Slice(step.Batch * heads, worker, workers, align: 1);
        for (int item = i0; item < i1; item++)
        {
            int b = item / heads, head = item % heads;
            for (int t = 0; t < step.Tokens; t++)
            {
                long r = (long)b * step.Tokens + t;
                Query(q + r * ldq + head * d, cache, b, head / group, step.Past + t, step.PadOf(b), alibi, head, scores, output + r * ldo + head * d);
            }
        }
    }

    /// <summary>One query head at absolute cache index <paramref name="qpos"/> of batch row <paramref name="row"/>.</summary>
    public static void Query(float* q, in KvPages cache, int row, int kvHead, int qpos, int pad, AlibiTerm alibi, int head, float* scores, float* output)
    {
        int d = cache.HeadDim;
        float scale = 1f / MathF.Sqrt(d);
        var qs = new ReadOnlySpan<float>(q, d);
        float max = float.NegativeInfinity;
        for (int j = 0; j <= qpos; j++)
        {
            float s = j < pad && j != qpos ? float.NegativeInfinity
                : TensorPrimitives.Dot(qs, new ReadOnlySpan<float>(cache.Key(row, j, kvHead), d)) * scale + alibi.Bias(head, Math.Max(0, j - pad));
            scores[j] = s;
            if (s > max) max = s;
        }
        var outSpan = new Span<float>(output, d);
        outSpan.Clear();
        float sum = 0;
        for (int j = 0; j <= qpos; j++)
        {
            float s = scores[j];
            if (float.IsNegativeInfinity(s)) continue;
            float p = MathF.Exp(s - max);
            sum += p;
            TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(cache.Value(row, j, kvHead), d), p, outSpan, outSpan);
        }
        TensorPrimitives.Multiply(outSpan, 1f / sum, outSpan);
    }
}
