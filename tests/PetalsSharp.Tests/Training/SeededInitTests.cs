using PetalsSharp.Models;
using PetalsSharp.Training;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Training;

/// <summary>
/// Adapters and classifier heads initialise from their own seed, not by seeding torch's global generator: the same seed
/// gives the same weights whatever the global state, and making one leaves the process's random stream alone.
/// In the training collection, which runs alone: the test itself draws from the global generator.
/// </summary>
[Collection(TrainingSwarmCollection.Name)]
public sealed class SeededInitTests
{
    [Fact]
    public void A_seeded_adapter_neither_depends_on_nor_resets_the_global_generator()
    {
        using var scope = NewDisposeScope();
        var weight = zeros(6, 10);                                                     // [out, in]
        manual_seed(1);
        using var first = new LoraLinear(weight, null, rank: 4, alpha: 8, seed: 3);
        var after1 = randn(8);
        manual_seed(1);
        using var second = new LoraLinear(weight, null, rank: 4, alpha: 8, seed: 4);
        var after2 = randn(8);
        manual_seed(2);
        using var third = new LoraLinear(weight, null, rank: 4, alpha: 8, seed: 3);

        Assert.True(first.A.allclose(third.A, 0, 0));                               // the seed decides, not the global state
        Assert.False(first.A.allclose(second.A, 0, 0));
        Assert.True(after1.allclose(after2, 0, 0));                                  // the stream was not reseeded by the seed
        Assert.True(first.A.abs().max().item<float>() <= 1 / Math.Sqrt(10) + 1e-6);     // kaiming_uniform(a=√5): ±1/√in
    }
}
