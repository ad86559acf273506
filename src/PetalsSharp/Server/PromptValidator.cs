using PetalsSharp.Wire;
using WireTensor = PetalsSharp.Wire.V1.Tensor;

namespace PetalsSharp.Server;

/// <summary>Checks deep prompts from the wire (Forward/Backward tensor "prompts", InferenceStep.prompts).</summary>
public static class PromptValidator
{
    /// <summary>
    /// Decodes optional deep prompts and checks they are finite float32 <c>[blocks, batch or 1, P, H]</c> with
    /// 1 ≤ P ≤ <paramref name="tokens"/> (they are added to the call's first P positions).
    /// </summary>
    public static TorchSharp.torch.Tensor? Decode(WireTensor? msg, int blocks, int batch, int tokens, int hiddenSize, long maxElements)
    {
        if (msg is null) return null;
        var shape = $"[{string.Join(", ", msg.Shape)}]";
        if (msg.Shape.Count != 4)
            throw new WireException($"prompts: expected shape [{blocks}, {batch} or 1, prefix, {hiddenSize}], got rank {msg.Shape.Count} {shape}");
        if (msg.Dtype != Wire.V1.DType.Float32) throw new WireException($"prompts: dtype {msg.Dtype} is not accepted (float32)");
        if (msg.Shape[0] != blocks) throw new WireException($"prompts {shape}: {msg.Shape[0]} blocks, the call runs {blocks}");
        if (msg.Shape[1] != 1 && msg.Shape[1] != batch) throw new WireException($"prompts {shape}: batch must be 1 or {batch}");
        if (msg.Shape[2] < 1 || msg.Shape[2] > tokens)
            throw new WireException($"prompts {shape}: prefix length must be in [1, {tokens}] (the tokens of this call)");
        if (msg.Shape[3] != hiddenSize) throw new WireException($"prompts {shape}: hidden size must be {hiddenSize}");
        var t = TensorCodec.Decode(msg, "prompts", maxElements).DetachFromDisposeScope();
        try
        {
            TensorCodec.RequireFinite(t, "prompts");
            return t;
        }
        catch
        {
            t.Dispose();
            throw;
        }
    }
}
