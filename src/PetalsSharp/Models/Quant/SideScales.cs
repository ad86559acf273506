using static TorchSharp.torch;

namespace PetalsSharp.Models.Quant;

/// <summary>
/// The f32 block scales of one packed matrix (<see cref="PackedLinear.BlockScales"/>), made on first use and owned
/// by the layer that holds the matrix. They cost 4 bytes per block (+12 % of the packed bytes), and the one-row
/// kernels then stop converting f16 scales for every tile of four rows, which took about 40 % of their time.
/// </summary>
internal sealed class SideScales : IDisposable
{
    Tensor? _scales;   // [rows, blocks] f32

    /// <summary>The scales of <paramref name="packed"/>; null for weights that are not packed or not on the CPU.</summary>
    public Tensor? Get(Tensor packed, QuantFormat format, long inFeatures)
    {
        if (format == QuantFormat.None || packed.device_type != TorchSharp.DeviceType.CPU) return null;
        if (Volatile.Read(ref _scales) is { } made) return made;
        // Made inside whatever dispose scope the first forward runs in, and kept beyond it: the layer owns it.
        var fresh = PackedLinear.BlockScales(packed, format, inFeatures).DetachFromDisposeScope();   // [rows, blocks]
        var previous = Interlocked.CompareExchange(ref _scales, fresh, null);
        if (previous is null) return fresh;
        fresh.Dispose();
        return previous;
    }

    public void Dispose() => Interlocked.Exchange(ref _scales, null)?.Dispose();
}
