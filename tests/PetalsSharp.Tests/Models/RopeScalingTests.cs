using PetalsSharp.Models;
using Xunit;

namespace PetalsSharp.Tests.Models;

/// <summary>Rope scalings against the formulas in HF transformers 4.45 <c>modeling_rope_utils</c>, recomputed here in double.</summary>
public sealed class RopeScalingTests
{
    const int Dim = 128;
    const double Theta = 500000.0;

    static double[] Plain(double theta) =>
        Enumerable.Range(0, Dim / 2).Select(i => 1.0 / Math.Pow(theta, 2.0 * i / Dim)).ToArray();

    static void AssertClose(double[] expected, double[] actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(actual[i] - expected[i]) <= 1e-6 * Math.Abs(expected[i]), $"[{i}] {actual[i]} vs {expected[i]}");
    }

    [Fact]
    public void Linear_divides_every_frequency_by_the_factor()
    {
        var rotary = new Rotary(Dim, Theta, new RopeScaling("linear", Factor: 4.0), 4096);
        AssertClose(Plain(Theta).Select(f => f / 4.0).ToArray(), rotary.InverseFrequencies());
    }

    [Fact]
    public void Dynamic_ntk_raises_the_base_only_past_the_trained_context()
    {
        var rotary = new Rotary(Dim, Theta, new RopeScaling("dynamic", Factor: 2.0), 4096);
        AssertClose(Plain(Theta), rotary.InverseFrequencies(4096));
        const int seqLen = 10000;
        var newBase = Theta * Math.Pow(2.0 * seqLen / 4096 - (2.0 - 1), Dim / (Dim - 2.0));
        AssertClose(Plain(newBase), rotary.InverseFrequencies(seqLen));
    }

    [Fact]
    public void Llama3_scales_low_frequencies_keeps_high_and_smooths_the_band_between()
    {
        var s = new RopeScaling("llama3", Factor: 8.0, LowFreqFactor: 1.0, HighFreqFactor: 4.0, OriginalMaxPositionEmbeddings: 8192);
        var actual = new Rotary(Dim, Theta, s, 131072).InverseFrequencies();
        double lowWavelen = 8192 / 1.0, highWavelen = 8192 / 4.0;
        var expected = Plain(Theta).Select(f =>
        {
            var wavelen = 2 * Math.PI / f;
            if (wavelen < highWavelen) return f;
            if (wavelen > lowWavelen) return f / 8.0;
            var smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0);
            return (1 - smooth) * f / 8.0 + smooth * f;
        }).ToArray();
        AssertClose(expected, actual);
        var ratios = actual.Select((f, i) => f / Plain(Theta)[i]).ToArray();
        Assert.Contains(ratios, r => Math.Abs(r - 1.0) < 1e-6);     // high-frequency band kept
        Assert.Contains(ratios, r => Math.Abs(r - 0.125) < 1e-6);   // low-frequency band divided by the factor
        Assert.Contains(ratios, r => r > 0.126 && r < 0.999);       // the band between is smoothed
    }

    [Fact]
    public void Config_parses_rope_scaling_variants_and_rejects_unknown_ones()
    {
        string Json(string scaling) => $$"""{"model_type":"llama","hidden_size":64,"num_attention_heads":4,"intermediate_size":128,"num_hidden_layers":2,"vocab_size":300,"rope_scaling":{{scaling}}}""";
        var c = (LlamaConfig)ModelConfigLoader.Parse(Json("""{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}"""));
        Assert.Equal(new RopeScaling("llama3", 8.0, 1.0, 4.0, 8192), c.RopeScaling);
        c = (LlamaConfig)ModelConfigLoader.Parse(Json("""{"type":"linear","factor":2.0}"""));
        Assert.Equal("linear", c.RopeScaling!.Type);
        c = (LlamaConfig)ModelConfigLoader.Parse(Json("null"));
        Assert.Null(c.RopeScaling);
        var e = Assert.Throws<ConfigException>(() => ModelConfigLoader.Parse(Json("""{"type":"yarn","factor":2.0}""")));
        Assert.Contains("yarn", e.Message);
    }
}
