using static TorchSharp.torch;

namespace PetalsSharp.Models.Weights;

/// <summary>Raw access to a CPU tensor's elements (TorchSharp 0.107 has no pointer accessor for 16-bit dtypes).</summary>
internal static unsafe class NativeMemory
{
    /// <summary>Pointer to the first element (storage offset included). The tensor must be contiguous and on the CPU.</summary>
    public static T* Pointer<T>(Tensor t) where T : unmanaged => Wire.TensorSpan.Pointer<T>(t);
}
