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

    /// <summary>Allocates an empty cache for <paramref name="batch"/> rows of up to <paramref name="maxLength"/> tokens.</summary>
    public LayerCache AllocateCache(int batch, int maxLength, Device device, ScalarType dtype)
    {
        var (kvHeads, headDim) = CacheShape;
        return new LayerCache(
            zeros([batch, kvHeads, maxLength, headDim], dtype, device),   // [B, kvH, max, D]
            zeros([batch, kvHeads, maxLength, headDim], dtype, device));  // [B, kvH, max, D]
    }
}

/// <summary>
/// Keys and values of one block for one session, preallocated to the session's max length. Keys are stored
/// after rotary (rotary families) so that a cached step never recomputes them.
/// </summary>
public sealed class LayerCache(Tensor keys, Tensor values) : IDisposable
{
    public Tensor Keys { get; } = keys;     // [B, kvH, max, D]
    public Tensor Values { get; } = values; // [B, kvH, max, D]

    public int MaxLength => (int)Keys.shape[2];
    public int Batch => (int)Keys.shape[0];

    /// <summary>Writes k/v for the new tokens at [past, past+T) and returns views of [0, past+T).</summary>
    public (Tensor Keys, Tensor Values) Append(Tensor k, Tensor v, int past)
    {
        var t = (int)k.shape[2];
        if (past + t > MaxLength)
            throw new InvalidOperationException($"KV cache overflow: {past} cached + {t} new > max length {MaxLength}");
        Keys.narrow(2, past, t).copy_(k);
        Values.narrow(2, past, t).copy_(v);
        return (Keys.narrow(2, 0, past + t), Values.narrow(2, 0, past + t));
    }

    /// <summary>Reorders rows for beam search: row i becomes old row <paramref name="hypoIds"/>[i].</summary>
    public void Reorder(Tensor hypoIds)
    {
        using var scope = NewDisposeScope();
        Keys.copy_(Keys.index_select(0, hypoIds));
        Values.copy_(Values.index_select(0, hypoIds));
    }

    public long Bytes => 2 * Keys.NumberOfElements * Keys.ElementSize;

    public void Dispose()
    {
        Keys.Dispose();
        Values.Dispose();
    }
}
