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
        CheckHeader(msg, blocks, hiddenSize, batch.ToString(System.Globalization.CultureInfo.InvariantCulture));
        CheckAgainstCall(msg.Shape, batch, tokens);
        var t = TensorCodec.Decode(msg, "prompts", maxElements).DetachFromDisposeScope();
        return Finite(t);
    }

    /// <summary>
    /// The checks of <see cref="Decode"/> that need neither the data nor the call's hidden states (a streamed
    /// Forward/Backward may send prompts first); <see cref="Check"/> does the rest once both are decoded.
    /// </summary>
    public static void CheckHeader(WireTensor msg, int blocks, int hiddenSize, string batch = "B")
    {
        var shape = $"[{string.Join(", ", msg.Shape)}]";
        if (msg.Shape.Count != 4)
            throw new WireException($"prompts: expected shape [{blocks}, {batch} or 1, prefix, {hiddenSize}], got rank {msg.Shape.Count} {shape}");
        if (msg.Dtype != Wire.V1.DType.Float32) throw new WireException($"prompts: dtype {msg.Dtype} is not accepted (float32)");
        if (msg.Shape[0] != blocks) throw new WireException($"prompts {shape}: {msg.Shape[0]} blocks, the call runs {blocks}");
        if (msg.Shape[3] != hiddenSize) throw new WireException($"prompts {shape}: hidden size must be {hiddenSize}");
    }

    /// <summary>Checks decoded prompts against the call's batch and tokens and that they are finite; disposes them on failure.</summary>
    public static TorchSharp.torch.Tensor? Check(TorchSharp.torch.Tensor? prompts, int batch, int tokens)
    {
        if (prompts is null) return null;
        try
        {
            CheckAgainstCall(prompts.shape, batch, tokens);
        }
        catch
        {
            prompts.Dispose();
            throw;
        }
        return Finite(prompts);
    }

    static void CheckAgainstCall(IReadOnlyList<long> dims, int batch, int tokens)
    {
        var shape = $"[{string.Join(", ", dims)}]";
        if (dims[1] != 1 && dims[1] != batch) throw new WireException($"prompts {shape}: batch must be 1 or {batch}");
        if (dims[2] < 1 || dims[2] > tokens)
            throw new WireException($"prompts {shape}: prefix length must be in [1, {tokens}] (the tokens of this call)");
    }

    static TorchSharp.torch.Tensor Finite(TorchSharp.torch.Tensor t)
    {
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
