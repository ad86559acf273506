using PetalsSharp.Models.Kernels;
using static TorchSharp.torch;

namespace PetalsSharp.Models;

/// <summary>
/// Keys and values of one block for one session, preallocated to the session's max length. Keys are stored after
/// rotary (rotary families) so that a cached step never recomputes them.
/// <para>
/// Storage is token-major, <c>[B, max, kvH, D]</c>, read as pages of <see cref="PageTokens"/> tokens of
/// <c>[kvH, D]</c> each (the last page of a row may be short, so the allocation is exactly what the server's budget
/// counts). The fused kernels address it only through <see cref="KvPages"/>, whose page lookup is the identity today,
/// so a paged cache shared across sessions can replace it with a page table. The reference TorchSharp path sees the
/// same memory as strided <c>[B, kvH, max, D]</c> views, so a session may prefill on one path and decode on the other.
/// </para>
/// </summary>
public sealed class LayerCache : IDisposable
{
    /// <summary>Tokens per page: a page is <c>[PageTokens, kvH, D]</c>.</summary>
    public const int PageTokens = 16;

    readonly Tensor _keys, _values;   // [B, max, kvH, D] [B, max, kvH, D]

    public LayerCache(int batch, int maxLength, int kvHeads, int headDim, Device device, ScalarType dtype)
    {
        _keys = zeros([batch, maxLength, kvHeads, headDim], dtype, device);     // [B, max, kvH, D]
        _values = zeros([batch, maxLength, kvHeads, headDim], dtype, device);   // [B, max, kvH, D]
        Keys = _keys.permute(0, 2, 1, 3);                                        // [B, kvH, max, D] view
        Values = _values.permute(0, 2, 1, 3);                                    // [B, kvH, max, D] view
        (Batch, MaxLength, KvHeads, HeadDim) = (batch, maxLength, kvHeads, headDim);
        (DType, Device) = (dtype, device);
    }

    /// <summary>Keys as the reference path and HF see them: a strided view of the token-major storage.</summary>
    public Tensor Keys { get; }     // [B, kvH, max, D]
    public Tensor Values { get; }   // [B, kvH, max, D]

    public int MaxLength { get; }
    public int Batch { get; }
    public int KvHeads { get; }
    public int HeadDim { get; }
    public ScalarType DType { get; }
    public Device Device { get; }

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
        _keys.copy_(_keys.index_select(0, hypoIds));
        _values.copy_(_values.index_select(0, hypoIds));
    }

    public long Bytes => 2 * _keys.NumberOfElements * _keys.ElementSize;

    /// <summary>
    /// Raw page access for the fused kernels (float32 CPU caches only). The pointers stay valid while the cache lives:
    /// the storage is allocated once and only ever written in place.
    /// </summary>
    public unsafe KvPages Pages()
    {
        if (DType != ScalarType.Float32 || Device.type != TorchSharp.DeviceType.CPU)
            throw new InvalidOperationException($"the fused kernels need a float32 CPU cache, this one is {DType} on {Device}");
        return new KvPages(Weights.NativeMemory.Pointer<float>(_keys), Weights.NativeMemory.Pointer<float>(_values),
            MaxLength, KvHeads, HeadDim);
    }

    public void Dispose()
    {
        Keys.Dispose();
        Values.Dispose();
        _keys.Dispose();
        _values.Dispose();
    }
}
