using PetalsSharp.Models;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Parity;

/// <summary>The Falcon engine against HF transformers outputs on the falcon-new fixture (40B layout, 8/2 heads).</summary>
public sealed class FalconParityTests(FalconParityTests.Model m) : FixtureParity<FalconParityTests.Model>(m), IClassFixture<FalconParityTests.Model>
{
    public sealed class Model() : FixtureModel("falcon-new");

    /// <summary>HF 4.45 caches the 40B layout's keys repeated for every query head; this engine keeps one per group.</summary>
    protected override Tensor CacheAsStored(Tensor hfCache)
    {
        var c = M.Lm.Config;
        return hfCache.index_select(1, arange(0, c.NumHeads, c.KvGroups, dtype: ScalarType.Int64));   // [B, kvH, 4, D]
    }

    [Fact]
    public void Config_reads_the_new_layout()
    {
        var c = (FalconConfig)M.Lm.Config;
        Assert.Equal((300, 128, 512, 2, 8, 2, 16), (c.VocabSize, c.HiddenSize, c.FfnHiddenSize, c.NumLayers, c.NumHeads, c.NumKvHeads, c.HeadDim));
        Assert.True(c.NewDecoderArchitecture && c.TwoInputNorms && c.ParallelAttn && c.TieWordEmbeddings);
        Assert.False(c.Bias || c.Alibi);
    }

    [Fact]
    public void Rope_inverse_frequencies_match_HF()
    {
        var c = (FalconConfig)M.Lm.Config;
        var actual = new Rotary(c.HeadDim, c.RopeTheta, c.RopeScaling, c.MaxPositionEmbeddings).InverseFrequencies();
        var expected = M.Ref["rope_inv_freq"].EnumerateArray().Select(x => x.GetSingle()).ToArray();
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(actual[i] - expected[i]) <= 1e-6 * Math.Abs(expected[i]), $"inv_freq[{i}]: {actual[i]} vs {expected[i]}");
    }
}
