using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace PetalsSharp.Wire;

/// <summary>
/// A CPU tensor's elements as a span over its own memory. TorchSharp's <c>Tensor.bytes</c> does the same but cost
/// about 10 ms per call on every step of a 3-server chain in the swarm benchmark (P1: swarm ÷ local fell from 0.9 to
/// 0.4 when the finite check switched to it), so the wire path reads the data pointer itself.
/// </summary>
internal static unsafe class TensorSpan
{
    [DllImport("LibTorchSharp")]
    static extern IntPtr THSTensor_data(IntPtr handle);

    /// <summary>Pointer to the first element (storage offset included). The tensor must be contiguous and on the CPU.</summary>
    public static T* Pointer<T>(Tensor t) where T : unmanaged => (T*)THSTensor_data(t.Handle);

    /// <summary>The tensor's bytes, in place. It must be contiguous, on the CPU, and under 2 GiB.</summary>
    public static Span<byte> Bytes(Tensor t)
    {
        if (t.device_type != TorchSharp.DeviceType.CPU || !t.is_contiguous())
            throw new InvalidOperationException("a span needs a contiguous CPU tensor");
        long length = t.NumberOfElements * t.ElementSize;
        return length == 0 ? Span<byte>.Empty : new Span<byte>(Pointer<byte>(t), checked((int)length));
    }
}
