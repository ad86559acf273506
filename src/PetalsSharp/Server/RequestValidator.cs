using Google.Protobuf.Collections;
using Grpc.Core;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using static TorchSharp.torch;
using WireTensor = PetalsSharp.Wire.V1.Tensor;

namespace PetalsSharp.Server;

/// <summary>
/// Checks on request fields that need the server's context (span, hidden size, session state). Every failure
/// names the field; <see cref="WireException"/> becomes INVALID_ARGUMENT, other codes are thrown as
/// <see cref="RpcException"/> directly.
/// </summary>
public static class RequestValidator
{
    /// <summary>Longest session or step id accepted.</summary>
    public const int MaxIdLength = 128;

    /// <summary>Throws unless <c>[start, end)</c> is a non-empty range inside the served span.</summary>
    public static void CheckRange(int start, int end, int spanStart, int spanEnd)
    {
        if (end <= start)
            throw new WireException($"block range [{start}, {end}): start_block must be below end_block");
        if (start < spanStart || end > spanEnd)
            throw new WireException($"block range [{start}, {end}) is not inside the served span [{spanStart}, {spanEnd})");
    }

    /// <summary>Throws unless <paramref name="compression"/> is one this server can encode.</summary>
    public static void CheckCompression(Compression compression, string field)
    {
        if (!TensorCodec.Supported.Contains(compression))
            throw new WireException($"{field}: unknown compression {(int)compression}");
    }

    /// <summary>Returns the padding (null when empty) after checking it has one entry per row, each in [0, limit].</summary>
    public static int[]? CheckLeftPadding(RepeatedField<int> padding, int batch, int limit, string field = "left_padding")
    {
        if (padding.Count == 0) return null;
        if (padding.Count != batch)
            throw new WireException($"{field} has {padding.Count} entries, the batch has {batch} rows");
        for (int i = 0; i < padding.Count; i++)
            if (padding[i] < 0 || padding[i] > limit)
                throw new WireException($"{field}[{i}] = {padding[i]} is outside [0, {limit}]");
        return padding.ToArray();
    }

    /// <summary>Throws unless the id is non-empty and at most <see cref="MaxIdLength"/> characters.</summary>
    public static void CheckId(string id, string field)
    {
        if (string.IsNullOrEmpty(id)) throw new WireException($"{field} is empty");
        if (id.Length > MaxIdLength) throw new WireException($"{field} has {id.Length} characters; the limit is {MaxIdLength}");
    }

    /// <summary>Decodes hidden states and checks they are finite <c>[B, T, H]</c> float32 with B ≥ 1.</summary>
    public static TorchSharp.torch.Tensor DecodeHidden(WireTensor? msg, string what, int hiddenSize, long maxElements, bool allowEmptySequence)
    {
        if (msg is null) throw new WireException($"{what}: missing tensor");
        CheckHidden(msg, what, hiddenSize, allowEmptySequence);
        // Detached: a request thread may carry someone else's dispose scope, and the caller owns this tensor.
        var t = TensorCodec.Decode(msg, what, maxElements).DetachFromDisposeScope();
        try
        {
            TensorCodec.RequireFinite(t, what);
            return t;
        }
        catch
        {
            t.Dispose();
            throw;
        }
    }

    /// <summary>The checks of <see cref="DecodeHidden"/> that need only the header (shape, dtype), not the data.</summary>
    public static void CheckHidden(WireTensor msg, string what, int hiddenSize, bool allowEmptySequence)
    {
        if (msg.Shape.Count != 3)
            throw new WireException($"{what}: expected shape [batch, tokens, {hiddenSize}], got rank {msg.Shape.Count} [{string.Join(", ", msg.Shape)}]");
        foreach (var d in msg.Shape)
            if (d < 0) throw new WireException($"{what}: negative dimension {d} in shape [{string.Join(", ", msg.Shape)}]");
        if (msg.Dtype != DType.Float32)
            throw new WireException($"{what}: dtype {msg.Dtype} is not accepted for hidden states (float32)");
        if (msg.Shape[2] != hiddenSize)
            throw new WireException($"{what}: hidden size {msg.Shape[2]} does not match the model's {hiddenSize}");
        if (msg.Shape[0] < 1) throw new WireException($"{what}: batch {msg.Shape[0]} must be at least 1");
        if (msg.Shape[1] < (allowEmptySequence ? 0 : 1))
            throw new WireException($"{what}: {msg.Shape[1]} tokens; at least {(allowEmptySequence ? 0 : 1)} needed");
    }

    /// <summary>Decodes optional beam-search ids: int64 <c>[batch]</c>, each in [0, batch).</summary>
    public static TorchSharp.torch.Tensor? DecodeHypoIds(WireTensor? msg, int batch)
    {
        if (msg is null) return null;
        if (msg.Dtype != DType.Int64) throw new WireException($"hypo_ids: dtype {msg.Dtype} is not accepted (int64)");
        if (msg.Shape.Count != 1 || msg.Shape[0] != batch)
            throw new WireException($"hypo_ids: expected shape [{batch}], got [{string.Join(", ", msg.Shape)}]");
        var t = TensorCodec.Decode(msg, "hypo_ids", batch).DetachFromDisposeScope();
        var ids = t.data<long>().ToArray();
        for (int i = 0; i < ids.Length; i++)
            if (ids[i] < 0 || ids[i] >= batch)
            {
                t.Dispose();
                throw new WireException($"hypo_ids[{i}] = {ids[i]} is outside [0, {batch})");
            }
        return t;
    }

    /// <summary>An RpcException with <paramref name="code"/> and <paramref name="message"/>.</summary>
    public static RpcException Error(StatusCode code, string message) => new(new Status(code, message));
}
