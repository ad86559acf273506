using TorchSharp;
using static TorchSharp.torch;

namespace PetalsSharp.Models.Kernels;

/// <summary>
/// A LoRA update for one linear on the fused path: <c>y += (x Aᵀ) Bᵀ</c> with <c>A [r, in]</c> and the pre-scaled
/// <c>B [out, r]</c> read in place (both float32, as <see cref="Lora.LoraAdapter"/> keeps them). It is a small extra
/// product next to the base weight's, so an adapter costs r·(in + out) weights per row instead of a fallback.
/// </summary>
public readonly unsafe struct LowRank(WeightMatrix a, float* b, int outFeatures)
{
    readonly WeightMatrix _a = a;
    readonly float* _b = b;

    public bool IsSet => _b is not null;
    public int Rank => _a.Rows;
    public int OutFeatures { get; } = outFeatures;

    /// <summary>Views float32 CPU factors; throws when they cannot be read in place (callers checked already).</summary>
    public static LowRank From(Tensor a, Tensor scaledB)
    {
        if (a.dtype != ScalarType.Float32 || scaledB.dtype != ScalarType.Float32 || !scaledB.is_contiguous() || scaledB.device_type != DeviceType.CPU)
            throw new InvalidOperationException("LoRA factors must be contiguous float32 CPU tensors on the fused path");
        var wa = WeightMatrix.TryFrom(a) ?? throw new InvalidOperationException("LoRA A cannot be read in place");
        return new LowRank(wa, Weights.NativeMemory.Pointer<float>(scaledB), (int)scaledB.shape[0]);
    }

    /// <summary>
    /// Adds the update to output columns [<paramref name="o0"/>, <paramref name="o1"/>) of <paramref name="y"/> (row
    /// stride <paramref name="ldy"/>) for <paramref name="rows"/> rows of <paramref name="x"/>. Every worker computes the
    /// whole (tiny) <c>x Aᵀ</c> into its own <paramref name="scratch"/> <c>[rows, r]</c>, so no barrier is needed.
    /// </summary>
    public void AddTo(float* x, int rows, float* scratch, float* y, int ldy, int o0, int o1)
    {
        if (!IsSet || o1 <= o0) return;
        int r = Rank;
        MatRows.MultiplyRange(_a, x, rows, scratch, r, null, 0, r);      // [rows, r]
        for (int o = o0; o < o1; o++)
        {
            var bRow = new ReadOnlySpan<float>(_b + (long)o * r, r);
            for (int row = 0; row < rows; row++)
                y[(long)row * ldy + o] += System.Numerics.Tensors.TensorPrimitives.Dot(bRow, new ReadOnlySpan<float>(scratch + (long)row * r, r));
        }
    }
}
