using static TorchSharp.torch;

namespace PetalsSharp.Training;

/// <summary>
/// Initialisation from a private generator. Seeding torch's global generator instead (<c>manual_seed</c>) would reset the
/// random stream of the whole process: a user's sampling after creating an adapter would repeat, and a draw on another
/// thread between the seed and the init would change the weights.
/// </summary>
internal static class SeededInit
{
    /// <summary>
    /// <c>nn.init.kaiming_uniform_(w, a=√5)</c>, as <c>nn.Linear</c> and PEFT's LoRA A use: uniform in ±1/√fan_in, with
    /// <paramref name="weight"/> <c>[out, in]</c>.
    /// </summary>
    public static void KaimingUniform(Tensor weight, long seed)
    {
        using var generator = new Generator((ulong)seed);
        double bound = 1.0 / Math.Sqrt(weight.shape[1]);
        using var u = rand(weight.shape, generator: generator);                          // [out, in] in [0, 1)
        using var scaled = u.mul(2 * bound).sub_(bound);
        weight.copy_(scaled);
    }
}
