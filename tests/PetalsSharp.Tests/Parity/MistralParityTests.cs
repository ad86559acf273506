using System.Text.Json.Nodes;
using PetalsSharp.Models;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Parity;

/// <summary>
/// The Mistral engine against HF transformers outputs on the mistral fixture (Llama blocks, sliding window 4 over a
/// 7-token input, GQA 4/2, rope_theta 1e6; README tolerances). The common checks (logits, hidden states, blocks,
/// incremental steps and cache, greedy tokens, prompt tuning) come from <see cref="FixtureParity{TModel}"/>.
/// </summary>
public sealed class MistralParityTests(MistralParityTests.Model m) : FixtureParity<MistralParityTests.Model>(m), IClassFixture<MistralParityTests.Model>
{
    public sealed class Model() : FixtureModel("mistral");

    [Fact]
    public void The_config_reads_as_a_windowed_Llama()
    {
        var c = (MistralConfig)M.Lm.Config;
        Assert.Equal((4, 4, 2, 16), (c.SlidingWindow!.Value, c.NumHeads, c.NumKvHeads, c.HeadDim));
        Assert.Equal(4, c.AttentionWindow);
        Assert.False(c.TieWordEmbeddings);
        Assert.IsType<LlamaBlock>(((LocalBlockStack)M.Lm.Blocks).Blocks[0]);
    }

    [Fact]
    public void Rope_inverse_frequencies_match_HF()
    {
        var c = (MistralConfig)M.Lm.Config;
        var rotary = new Rotary(c.HeadDim, c.RopeTheta, c.RopeScaling, c.MaxPositionEmbeddings);
        var expected = M.Ref["rope_inv_freq"].EnumerateArray().Select(x => x.GetSingle()).ToArray();
        var actual = rotary.InverseFrequencies();
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(actual[i] - expected[i]) <= 1e-6 * Math.Abs(expected[i]), $"inv_freq[{i}]: {actual[i]} vs {expected[i]}");
    }

    /// <summary>
    /// The window matters: the same weights with <c>sliding_window: null</c> move the logits by what the fixture
    /// recorded for HF without the window (6.6), and only at positions 4 to 6; positions 0 to 3 see no difference.
    /// </summary>
    [Fact]
    public void Removing_the_window_changes_the_logits_as_HF_recorded()
    {
        using var scope = NewDisposeScope();
        var dir = Directory.CreateTempSubdirectory("petals-mistral-nowindow").FullName;
        try
        {
            foreach (var f in Directory.GetFiles(M.Ref.Dir)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!.AsObject();
            config["sliding_window"] = null;
            File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
            using var windowless = CausalLM.Load(dir);
            Assert.Null(windowless.Config.AttentionWindow);
            var ids = M.Ref.Longs("input_ids");
            var expected = M.Ref.Floats("logits");                                        // [B, T, V]
            var without = windowless.Forward(ids);                                        // [B, T, V]
            TensorAssert.Close(expected[.., ..4], without[.., ..4], Atol, Rtol, "positions 0-3 do not reach past the window");
            double effect = TensorAssert.MaxAbsDiff(expected, without);
            double recorded = M.Ref["sliding_window_effect_max_abs_diff"].GetDouble();
            Assert.True(Math.Abs(effect - recorded) <= 1e-3 + 1e-4 * recorded, $"effect {effect} vs HF's {recorded}");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
