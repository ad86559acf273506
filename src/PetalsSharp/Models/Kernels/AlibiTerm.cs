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

    /// <summary>
    /// <c>scores[i] += Bias(head, key − pad)</c> for the keys <paramref name="first"/> + i of a row with
    /// <paramref name="pad"/> padding tokens; a masked (−∞) score stays masked.
    /// </summary>
    public void AddTo(Span<float> scores, int head, int first, int pad)
    {
        for (int i = 0; i < scores.Length; i++) scores[i] += Bias(head, Math.Max(0, first + i - pad));
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
