using System.Text.Json.Nodes;
using PetalsSharp.Models;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// The fused Mixtral decode path (attention, then routing and the chosen experts on the rows routed to them) is pinned
/// to the TorchSharp reference on the mixtral fixture (4 experts, top-2, 4/2 heads), with <see cref="FusedParity"/>'s
/// script: per weight dtype, with and without a LoRA adapter (router and experts included), prefix then 1 then 2
/// tokens, a rollback and beam reorders, with and without left padding, and within a sliding window shorter than the
/// sequence. Greedy decoding picks the same tokens on both paths.
/// </summary>
public sealed class FusedMixtralTests
{
    static readonly string ModelDir = TestData.Path("mixtral");

    [Theory]
    [InlineData(ScalarType.Float32, false)]
    [InlineData(ScalarType.Float32, true)]
    [InlineData(ScalarType.BFloat16, false)]
    [InlineData(ScalarType.BFloat16, true)]
    [InlineData(ScalarType.Float16, false)]
    [InlineData(ScalarType.Float16, true)]
    public void Session_steps_match_the_reference(ScalarType dtype, bool withAdapter) =>
        FusedParity.RunScript(ModelDir, dtype, leftPadding: [0, 2], FusedParity.Rtol(dtype), withAdapter ? "mixtral" : null);

    [Fact]
    public void The_adapter_reaches_the_router_and_every_expert()
    {
        using var ckpt = Checkpoint.Open(ModelDir);
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers);
        var plan = ((MixtralBlock)stack.Blocks[0]).TryFuse();
        Assert.NotNull(plan);
        var c = (MixtralConfig)stack.Config;
        Assert.Contains("block_sparse_moe.gate", plan.Modules);
        for (int e = 0; e < c.NumLocalExperts; e++)
            foreach (var w in new[] { "w1", "w2", "w3" }) Assert.Contains($"block_sparse_moe.experts.{e}.{w}", plan.Modules);
        Assert.Equal(plan.Modules.Count, plan.Modules.Distinct().Count());
    }

    [Fact]
    public void Without_left_padding_too() => FusedParity.RunScript(ModelDir, ScalarType.Float32, leftPadding: null);

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    public void A_sliding_window_shorter_than_the_sequence_matches_the_reference(ScalarType dtype)
    {
        var dir = WindowedCopy(window: 3);
        Assert.Equal(3, ((MixtralConfig)ModelConfigLoader.Load(dir)).SlidingWindow);
        // The script reaches 11 positions, so later queries see only their last 3 keys.
        FusedParity.RunScript(dir, dtype, leftPadding: [0, 2], FusedParity.Rtol(dtype));
    }

    /// <summary>
    /// Eight experts with k = 1 and k = 3 (the prefix's 10 rows give experts uneven subsets), one KV head, an
    /// intermediate width that does not split evenly across workers, and a window.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void Other_expert_counts_and_k_match_the_reference(int topK)
    {
        var config = new MixtralConfig
        {
            ModelType = "mixtral", VocabSize = 64, HiddenSize = 64, NumLayers = 2, NumHeads = 4, NumKvHeads = 1,
            HeadDim = 16, IntermediateSize = 84, NumLocalExperts = 8, NumExpertsPerTok = topK, SlidingWindow = 5,
            RmsNormEps = 1e-5, EosTokenIds = [63],
        };
        FusedParity.OnRandomCheckpoint(config, seed: 13, dir => FusedParity.RunScript(dir, ScalarType.Float32, leftPadding: [1, 0]));
    }

    [Fact]
    public void Greedy_steps_have_the_same_logits_and_tokens() => FusedParity.GreedyMatches(ModelDir, "mixtral");

    [Fact]
    public Task Generation_gives_the_same_tokens_on_both_paths() => FusedParity.GenerationMatches(ModelDir);

    /// <summary>The mixtral fixture in a temp folder with <c>sliding_window</c> set.</summary>
    static string WindowedCopy(int window)
    {
        var dir = Path.Combine(Path.GetTempPath(), "petals-mixtral-window-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        foreach (var file in new[] { "model.safetensors", "generation_config.json" })
            File.Copy(Path.Combine(ModelDir, file), Path.Combine(dir, file));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(ModelDir, "config.json")))!.AsObject();
        config["sliding_window"] = window;
        File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
        return dir;
    }
}
