using PetalsSharp.Models;
using Xunit;

namespace PetalsSharp.Tests.Parity;

/// <summary>The BLOOM engine against HF transformers outputs on the bloom fixture (6 ALiBi heads, embedding norm).</summary>
public sealed class BloomParityTests(BloomParityTests.Model m) : FixtureParity<BloomParityTests.Model>(m), IClassFixture<BloomParityTests.Model>
{
    public sealed class Model() : FixtureModel("bloom");

    [Fact]
    public void Config_reads_the_short_HF_names()
    {
        var c = (BloomConfig)M.Lm.Config;
        Assert.Equal((256, 96, 3, 6, 6, 16), (c.VocabSize, c.HiddenSize, c.NumLayers, c.NumHeads, c.NumKvHeads, c.HeadDim));
        Assert.True(c.TieWordEmbeddings);
        Assert.False(c.ApplyResidualConnectionPostLayernorm);
    }
}
