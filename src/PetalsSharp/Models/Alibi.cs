using static TorchSharp.torch;

namespace PetalsSharp.Models;

/// <summary>
/// ALiBi (Press et al.), as HF's <c>build_alibi_tensor</c> computes it for BLOOM and Falcon: a per-head slope
/// times each key's position. The bias ignores the query position because softmax is shift-invariant per row,
/// which is also why cached keys carry no position at all.
/// </summary>
public static class Alibi
{
    /// <summary>
    /// Per-head slopes <c>[heads]</c>. For a power of two n the slopes are <c>2^(-8i/n)</c>, i = 1..n; otherwise
    /// the closest lower power of two p gives the first p slopes and the odd powers of <c>2^(-8/(2p))</c> the rest.
    /// </summary>
    public static float[] Slopes(int numHeads)
    {
        if (numHeads <= 0) throw new ArgumentOutOfRangeException(nameof(numHeads), "ALiBi needs at least one head");
        int closest = 1 << (int)Math.Floor(Math.Log2(numHeads));
        // HF builds the base in double and stores it as a float32 tensor before torch.pow: mirror both roundings.
        float baseSlope = (float)Math.Pow(2, -Math.Pow(2, -(Math.Log2(closest) - 3)));
        var slopes = new List<float>();
        for (int i = 1; i <= closest; i++) slopes.Add(MathF.Pow(baseSlope, i));
        if (closest != numHeads)
        {
            float extraBase = (float)Math.Pow(2, -Math.Pow(2, -(Math.Log2(2 * closest) - 3)));
            int remaining = Math.Min(closest, numHeads - closest);
            for (int i = 0; i < remaining; i++) slopes.Add(MathF.Pow(extraBase, 2 * i + 1));
        }
        return slopes.ToArray();
    }

    /// <summary>
    /// Additive attention bias <c>[B, heads, T, S]</c> for one step: <c>slope_h · position(key)</c>, where a key's
    /// position counts from its row's first real token (left padding sits at 0 and is masked anyway), times
    /// <paramref name="scale"/>. Falcon's HF port rounds the slopes and the products to bfloat16
    /// (<paramref name="bfloat16"/>); BLOOM's stays in float32. Memoised per step, so blocks share one tensor.
    /// </summary>
    public static Tensor Bias(StepContext ctx, int numHeads, ScalarType dtype, bool bfloat16 = false, double scale = 1.0) =>
        ctx.Memo(("alibi", numHeads, dtype, bfloat16, scale), () =>
        {
            var positions = arange(0, ctx.TotalLength, dtype: ScalarType.Int64, device: ctx.Device)
                .unsqueeze(0).expand(ctx.Batch, ctx.TotalLength);                                   // [B, S]
            if (ctx.LeftPadding is not null)
            {
                var pad = tensor(ctx.LeftPadding.Select(p => (long)p).ToArray(), device: ctx.Device).unsqueeze(1); // [B, 1]
                positions = (positions - pad).clamp_min(0);                                        // [B, S]
            }
            var slopes = tensor(Slopes(numHeads), device: ctx.Device).view(1, numHeads, 1);         // [1, heads, 1]
            if (bfloat16) slopes = slopes.to(ScalarType.BFloat16);
            var bias = (slopes * positions.unsqueeze(1)).to(ScalarType.Float32);                   // [B, heads, S]
            if (scale != 1.0) bias = bias * scale;
            return bias.unsqueeze(2).expand(ctx.Batch, numHeads, ctx.NewTokens, ctx.TotalLength)
                .to(dtype).contiguous();                                                            // [B, heads, T, S]
        });
}
