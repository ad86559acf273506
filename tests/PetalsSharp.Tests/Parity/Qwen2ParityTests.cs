using PetalsSharp.Models;
using Xunit;

namespace PetalsSharp.Tests.Parity;

/// <summary>
/// The Qwen2 engine against HF transformers outputs on the qwen2 fixture (Llama blocks with q/k/v biases, tied
/// embeddings, GQA 4/2, rope_theta 1e6, rms_norm_eps 1e-6; README tolerances). The common checks come from
/// <see cref="FixtureParity{TModel}"/>.
/// </summary>
public sealed class Qwen2ParityTests(Qwen2ParityTests.Model m) : FixtureParity<Qwen2ParityTests.Model>(m), IClassFixture<Qwen2ParityTests.Model>
{
    public sealed class Model() : FixtureModel("qwen2");

    [Fact]
    public void The_config_reads_as_Llama_with_qkv_biases_and_tied_embeddings()
    {
        var c = (Qwen2Config)M.Lm.Config;
        Assert.Equal((false, (int?)null, 28), (c.UseSlidingWindow, c.SlidingWindow, c.MaxWindowLayers));
        Assert.Null(c.AttentionWindow);
        Assert.True(c.TieWordEmbeddings);
        Assert.Empty(c.EosTokenIds);
        Assert.Null(c.BosTokenId);
        var names = c.Family.BlockTensors(c, 0).Select(s => s.Name).ToHashSet();
        foreach (var p in new[] { "q_proj", "k_proj", "v_proj" }) Assert.Contains($"model.layers.0.self_attn.{p}.bias", names);
        Assert.DoesNotContain("model.layers.0.self_attn.o_proj.bias", names);
        Assert.DoesNotContain(names, n => n.Contains("mlp") && n.EndsWith(".bias"));
        Assert.DoesNotContain(c.Family.EndTensors(c), s => s.Name == "lm_head.weight");
    }

    [Fact]
    public void Rope_inverse_frequencies_match_HF()
    {
        var c = (Qwen2Config)M.Lm.Config;
        var rotary = new Rotary(c.HeadDim, c.RopeTheta, c.RopeScaling, c.MaxPositionEmbeddings);
        var expected = M.Ref["rope_inv_freq"].EnumerateArray().Select(x => x.GetSingle()).ToArray();
        var actual = rotary.InverseFrequencies();
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(actual[i] - expected[i]) <= 1e-6 * Math.Abs(expected[i]), $"inv_freq[{i}]: {actual[i]} vs {expected[i]}");
    }
}
