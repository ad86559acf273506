using Xunit;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// As <see cref="FusedFixtureTests"/> for the dense families' HF fixtures (falcon-new, bloom): greedy decoding gives the
/// same tokens on the fused path and on the reference, every step's logits agree within 1e-4, and the fused path ran.
/// </summary>
public sealed class FusedDenseFixtureTests
{
    [Theory]
    [InlineData("falcon-new")]
    [InlineData("bloom")]
    public void Greedy_steps_have_the_same_logits_and_tokens(string name) => FusedParity.GreedyMatches(TestData.Path(name), name);

    [Theory]
    [InlineData("falcon-new")]
    [InlineData("bloom")]
    public Task Generation_gives_the_same_tokens_on_both_paths(string name) => FusedParity.GenerationMatches(TestData.Path(name));
}
