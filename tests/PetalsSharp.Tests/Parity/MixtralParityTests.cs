using PetalsSharp.Generation;
using PetalsSharp.Models;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Parity;

/// <summary>
/// The Mixtral engine against HF transformers outputs on the mixtral fixture (4 experts, top-2, GQA 4/2, rope_theta 1e6;
/// README tolerances). The common checks (logits, hidden states, blocks, incremental steps and cache, greedy tokens,
/// prompt tuning) come from <see cref="FixtureParity{TModel}"/>.
/// </summary>
public sealed class MixtralParityTests(MixtralParityTests.Model m) : FixtureParity<MixtralParityTests.Model>(m), IClassFixture<MixtralParityTests.Model>
{
    public sealed class Model() : FixtureModel("mixtral");

    [Fact]
    public void Rope_inverse_frequencies_match_HF()
    {
        var c = (MixtralConfig)M.Lm.Config;
        var rotary = new Rotary(c.HeadDim, c.RopeTheta, c.RopeScaling, c.MaxPositionEmbeddings);
        var expected = M.Ref["rope_inv_freq"].EnumerateArray().Select(x => x.GetSingle()).ToArray();
        var actual = rotary.InverseFrequencies();
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(actual[i] - expected[i]) <= 1e-6 * Math.Abs(expected[i]), $"inv_freq[{i}]: {actual[i]} vs {expected[i]}");
    }

    [Fact]
    public void The_fixture_routes_tokens_to_every_expert_and_two_per_token()
    {
        using var scope = NewDisposeScope();
        var c = (MixtralConfig)M.Lm.Config;
        Assert.Equal((4, 2, (int?)null), (c.NumLocalExperts, c.NumExpertsPerTok, c.SlidingWindow));
        var block = (MixtralBlock)((LocalBlockStack)M.Lm.Blocks).Blocks[0];
        var h = M.Ref.Floats("hidden_states")[0].reshape(-1, c.HiddenSize);  // [B*T, H] (un-normed, enough to see routing)
        var (weights, experts) = block.Moe.Route(h);                        // [N, 2] [N, 2]
        TensorAssert.Close(ones(h.shape[0]), weights.sum(-1), 1e-6, 0, "renormalised weights");
        Assert.Equal(c.NumLocalExperts, experts.data<long>().Distinct().Count());
    }
}
