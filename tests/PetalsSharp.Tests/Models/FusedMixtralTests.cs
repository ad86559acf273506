using System.Text.Json.Nodes;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Models.Kernels;
using PetalsSharp.Models.Lora;
using PetalsSharp.Tests.Adapters;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// The fused Mixtral decode path (attention, then routing and the chosen experts on the rows routed to them) is pinned
/// to the TorchSharp reference on the mixtral fixture (4 experts, top-2, 4/2 heads), with the script of
/// <see cref="FusedLlamaTests"/>: per weight dtype, with and without a LoRA adapter (router and experts included),
/// prefix then 1 then 2 tokens, a rollback and beam reorders, with and without left padding, and within a sliding
/// window shorter than the sequence. Greedy decoding picks the same tokens on both paths.
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
    public void Session_steps_match_the_reference(ScalarType dtype, bool withAdapter)
    {
        using var ckpt = Checkpoint.Open(ModelDir);
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers, dtype);
        using var adapter = withAdapter
            ? LoraAdapter.Load("tiny", TestAdapter.Write(TestAdapter.NewDir(), fixture: "mixtral"), stack.Config)
            : null;
        FusedLlamaTests.RunScript(stack, adapter, leftPadding: [0, 2], rtol: dtype == ScalarType.Float32 ? 1e-5 : 1e-4);
    }

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
    public void Without_left_padding_too()
    {
        using var ckpt = Checkpoint.Open(ModelDir);
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers);
        FusedLlamaTests.RunScript(stack, null, leftPadding: null);
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    public void A_sliding_window_shorter_than_the_sequence_matches_the_reference(ScalarType dtype)
    {
        var dir = WindowedCopy(window: 3);
        using var ckpt = Checkpoint.Open(dir);
        Assert.Equal(3, ((MixtralConfig)ckpt.Config).SlidingWindow);
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers, dtype);
        // The script reaches 11 positions, so later queries see only their last 3 keys.
        FusedLlamaTests.RunScript(stack, null, leftPadding: [0, 2], rtol: dtype == ScalarType.Float32 ? 1e-5 : 1e-4);
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
        var dir = Path.Combine(Directory.CreateTempSubdirectory("petals-fused-moe").FullName, "m");
        var config = new MixtralConfig
        {
            ModelType = "mixtral", VocabSize = 64, HiddenSize = 64, NumLayers = 2, NumHeads = 4, NumKvHeads = 1,
            HeadDim = 16, IntermediateSize = 84, NumLocalExperts = 8, NumExpertsPerTok = topK, SlidingWindow = 5,
            RmsNormEps = 1e-5, EosTokenIds = [63],
        };
        RandomCheckpoint.Write(config, dir, seed: 13);
        using var ckpt = Checkpoint.Open(dir);
        using var stack = ckpt.LoadBlocks(0, config.NumLayers);
        FusedLlamaTests.RunScript(stack, null, leftPadding: [1, 0]);
    }

    [Fact]
    public void Greedy_steps_have_the_same_logits_and_tokens()
    {
        using var lm = CausalLM.Load(ModelDir);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var prompt = new long[] { 1, 5, 9, 14, 20, 27 };
        var fused = FusedFixtureTests.Greedy(lm, prompt, reference: false);
        List<(Tensor Logits, long Token)> reference;
        using (FusedDecode.Disable()) reference = FusedFixtureTests.Greedy(lm, prompt, reference: true);
        Assert.Equal(reference.Select(r => r.Token), fused.Select(f => f.Token));
        for (int i = 0; i < fused.Count; i++)
        {
            var diff = TensorAssert.MaxAbsDiff(reference[i].Logits, fused[i].Logits);
            Assert.True(diff <= 1e-4, $"mixtral step {i}: logits differ by {diff}");
        }
    }

    [Fact]
    public async Task Generation_gives_the_same_tokens_on_both_paths()
    {
        using var lm = CausalLM.Load(ModelDir);
        var options = new GenerationOptions { MaxNewTokens = 32, IgnoreEos = true };
        var fused = await lm.GenerateAsync([[1, 2, 3, 4], [1, 7]], options);
        GenerationResult reference;
        using (FusedDecode.Disable()) reference = await lm.GenerateAsync([[1, 2, 3, 4], [1, 7]], options);
        Assert.Equal(reference.NewTokens, fused.NewTokens);
    }

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
