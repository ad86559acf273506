using PetalsSharp.Generation;
using PetalsSharp.Models;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Parity;

/// <summary>
/// The Llama engine against HF transformers outputs on the llama-gqa fixture (README tolerances). The common checks
/// (logits, hidden states, blocks, incremental steps and cache, greedy tokens, prompt tuning) come from
/// <see cref="FixtureParity{TModel}"/>.
/// </summary>
public sealed class LlamaParityTests(LlamaParityTests.Model m) : FixtureParity<LlamaParityTests.Model>(m), IClassFixture<LlamaParityTests.Model>
{
    public sealed class Model() : FixtureModel("llama-gqa");

    [Fact]
    public void Rope_inverse_frequencies_match_HF()
    {
        var c = (LlamaConfig)M.Lm.Config;
        var rotary = new Rotary(c.HeadDim, c.RopeTheta, c.RopeScaling, c.MaxPositionEmbeddings);
        var expected = M.Ref["rope_inv_freq"].EnumerateArray().Select(x => x.GetSingle()).ToArray();
        var actual = rotary.InverseFrequencies();
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(actual[i] - expected[i]) <= 1e-6 * Math.Abs(expected[i]), $"inv_freq[{i}]: {actual[i]} vs {expected[i]}");
    }
}
