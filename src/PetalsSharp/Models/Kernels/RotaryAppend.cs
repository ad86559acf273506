namespace PetalsSharp.Models.Kernels;

/// <summary>
/// Rotary tables for the step's rows and the phase that rotates q and k and writes k and v into the cache. Shared by
/// every rotary family (Llama, Mixtral, Falcon); a family without rotary (BLOOM) skips the tables and only appends.
/// </summary>
public static unsafe class RotaryAppend
{
    /// <summary>
    /// Fills <see cref="Slot.Cos"/>/<see cref="Slot.Sin"/> <c>[R, D/2]</c> as <see cref="Rotary.Tables"/> does: positions
    /// count from each row's first real token, and dynamic NTK sees the step's whole length (minus the least padding).
    /// </summary>
    /// <param name="step">The step whose rows get tables.</param>
    /// <param name="rotary">The block's rotary embedding.</param>
    /// <param name="fixedInverse">Inverse frequencies when they do not depend on the length (every scaling but dynamic); else null.</param>
    public static void Tables(FusedStep step, Rotary rotary, float[]? fixedInverse)
    {
        int half = rotary.HeadDim / 2;
        float* cos = step.Ensure(Slot.Cos, (long)MatRows.MaxRows * half);
        float* sin = step.Ensure(Slot.Sin, (long)MatRows.MaxRows * half);
        // Every block of a model has the same tables: fill them once per step (a block may still differ, hence the compare).
        if (fixedInverse is not null && step.RotaryTables.Step == step.StepNumber && step.RotaryTables.Inverse is { } made &&
            (ReferenceEquals(made, fixedInverse) || made.AsSpan().SequenceEqual(fixedInverse)))
            return;
        step.RotaryTables = (-1, null);
        double[]? dynamic = null;
        int dynamicLength = -1;
        for (int b = 0; b < step.Batch; b++)
            for (int t = 0; t < step.Tokens; t++)
            {
                int r = b * step.Tokens + t;
                float pos = Math.Max(0, step.PastOf(b) + t - step.PadOf(b));
                // Rare: only dynamic NTK allocates here, once per session of the step.
                if (fixedInverse is null && step.DynamicLength(b) != dynamicLength)
                    dynamic = rotary.InverseFrequencies(dynamicLength = step.DynamicLength(b));
                for (int i = 0; i < half; i++)
                {
                    float inv = fixedInverse is not null ? fixedInverse[i] : (float)dynamic![i];
                    float f = pos * inv;
                    cos[r * half + i] = MathF.Cos(f);
                    sin[r * half + i] = MathF.Sin(f);
                }
            }
        if (fixedInverse is not null) step.RotaryTables = (step.StepNumber, fixedInverse);
    }

    /// <summary>Inverse frequencies of <paramref name="rotary"/> when they are fixed, or null for dynamic NTK.</summary>
    public static float[]? FixedInverse(Rotary rotary) =>
        rotary.Scaling?.Type == "dynamic" ? null : rotary.InverseFrequencies().Select(x => (float)x).ToArray();

    /// <summary>
    /// This worker's share of rotating <c>q [R, heads·D]</c> and <c>k [R, kvH·D]</c> in place (when
    /// <paramref name="rotate"/>) and copying k and <c>v [R, kvH·D]</c> to the cache at [past, past+T).
    /// </summary>
    public static void Phase(FusedStep step, float* q, float* k, float* v, int heads, bool rotate, int worker, int workers)
    {
        int d = step.Cache.HeadDim, kvHeads = step.Cache.KvHeads, half = d / 2, perRow = heads + kvHeads;
        float* cos = step.Buffer(Slot.Cos), sin = step.Buffer(Slot.Sin);
        var (i0, i1) = MatRows.Slice(step.Rows * perRow, worker, workers, align: 1);
        for (int item = i0; item < i1; item++)
        {
            int r = item / perRow, head = item % perRow;
            float* c = cos + (long)r * half, s = sin + (long)r * half;
            if (head < heads)
            {
                if (rotate) RowKernels.Rotate(q + ((long)r * heads + head) * d, c, s, d);
                continue;
            }
            int kvHead = head - heads;
            float* key = k + ((long)r * kvHeads + kvHead) * d;
            if (rotate) RowKernels.Rotate(key, c, s, d);
            int b = r / step.Tokens, pos = step.PastOf(b) + r % step.Tokens, row = step.LocalRow(b);
            ref readonly var cache = ref step.PagesOf(b);
            cache.WriteKey(row, pos, kvHead, key);
            cache.WriteValue(row, pos, kvHead, v + ((long)r * kvHeads + kvHead) * d);
        }
    }
}
