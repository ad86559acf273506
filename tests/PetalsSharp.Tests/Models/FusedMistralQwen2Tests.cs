using PetalsSharp.Models;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// The fused decode path on Mistral (a window of 4, so every cached step attends to part of the cache) and Qwen2
/// (q/k/v biases, tied embeddings), pinned to the TorchSharp reference with <see cref="FusedParity"/>'s script: per
/// weight dtype, with and without a LoRA adapter, prefix then 1 then 2 tokens, a rollback and beam reorders.
/// </summary>
public sealed class FusedMistralQwen2Tests
{
    [Theory]
    [InlineData("mistral", ScalarType.Float32, false)]
    [InlineData("mistral", ScalarType.Float32, true)]
    [InlineData("mistral", ScalarType.BFloat16, false)]
    [InlineData("mistral", ScalarType.Float16, true)]
    [InlineData("qwen2", ScalarType.Float32, false)]
    [InlineData("qwen2", ScalarType.Float32, true)]
    [InlineData("qwen2", ScalarType.BFloat16, true)]
    [InlineData("qwen2", ScalarType.Float16, false)]
    public void Session_steps_match_the_reference(string fixture, ScalarType dtype, bool withAdapter) =>
        FusedParity.RunScript(TestData.Path(fixture), dtype, leftPadding: [0, 2], FusedParity.Rtol(dtype), withAdapter ? fixture : null);

    [Theory]
    [InlineData("mistral")]
    [InlineData("qwen2")]
    public void Greedy_steps_have_the_same_logits_and_tokens(string fixture) =>
        FusedParity.GreedyMatches(TestData.Path(fixture), fixture);

    /// <summary>36 positions with a window of 4: the cache drops pages behind the window on the way.</summary>
    [Theory]
    [InlineData("mistral")]
    [InlineData("qwen2")]
    public Task A_generation_gives_the_same_tokens_on_both_paths(string fixture) =>
        FusedParity.GenerationMatches(TestData.Path(fixture));

    [Fact]
    public void Qwen2_biases_are_on_the_fused_path()
    {
        using var ckpt = Checkpoint.Open(TestData.Path("qwen2"));
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers);
        Assert.NotNull(((LlamaBlock)stack.Blocks[0]).TryFuse());
    }
}
