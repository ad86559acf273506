using TorchSharp;
using static TorchSharp.torch;

namespace PetalsSharp.Models;

/// <summary>
/// One transformer block. The contract every server runs for a span: <c>hidden [B,T,H]</c>, a step context
/// (positions, padding, past length) and an optional KV cache give <c>hidden [B,T,H]</c>.
/// </summary>
public abstract class DecoderBlock : nn.Module
{
    protected DecoderBlock(string name, int index) : base(name) => Index = index;

    /// <summary>Absolute block index in the model.</summary>
    public int Index { get; }

    /// <summary>Runs the block. With a cache, new keys/values are written at [past, past+T) and attention sees all of it.</summary>
    public abstract Tensor Forward(Tensor hidden, StepContext ctx, LayerCache? cache = null);

    /// <summary>KV heads and head size of the cache this block needs.</summary>
    public abstract (int KvHeads, int HeadDim) CacheShape { get; }

    /// <summary>An empty cache for <paramref name="batch"/> rows of up to <paramref name="maxLength"/> tokens, with a pool of its own.</summary>
    public LayerCache AllocateCache(int batch, int maxLength, ScalarType dtype = ScalarType.Float32)
    {
        var (kvHeads, headDim) = CacheShape;
        return new LayerCache(batch, maxLength, kvHeads, headDim, dtype);
    }

    /// <summary>An empty cache drawing pages from <paramref name="pool"/>, charged to <paramref name="account"/>.</summary>
    public LayerCache AllocateCache(int batch, int maxLength, ScalarType dtype, KvPagePool pool, IKvAccount? account)
    {
        var (kvHeads, headDim) = CacheShape;
        return new LayerCache(batch, maxLength, kvHeads, headDim, dtype, pool, account);
    }

    /// <summary>
    /// This block's fused decode plan (C# kernels, no TorchSharp on the hot path), built once and kept; null when the
    /// family has none or the weights cannot be read in place. The caller decides per step whether it applies
    /// (<see cref="Kernels.FusedDecode"/>).
    /// </summary>
    public virtual Kernels.IFusedBlock? TryFuse() => null;
}
