using PetalsSharp.Models;
using PetalsSharp.Models.Kernels;
using PetalsSharp.Tests.Adapters;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// The fused Llama decode path is pinned to the TorchSharp reference, session step by session step, with
/// <see cref="FusedParity"/>'s script: per weight dtype, with and without a LoRA adapter, over a prefix then 1 then 2
/// tokens, a rollback and beam reorders, with left padding and grouped-query heads (llama-gqa: 4 query heads over 2 KV
/// heads), and at batch sizes other than 2.
/// </summary>
public sealed class FusedLlamaTests
{
    const string Fixture = "llama-gqa";

    [Theory]
    [InlineData(ScalarType.Float32, false)]
    [InlineData(ScalarType.Float32, true)]
    [InlineData(ScalarType.BFloat16, false)]
    [InlineData(ScalarType.BFloat16, true)]
    [InlineData(ScalarType.Float16, false)]
    [InlineData(ScalarType.Float16, true)]
    public void Session_steps_match_the_reference(ScalarType dtype, bool withAdapter) =>
        // The adapter grows activations to ~30, where 1e-4 is a few dozen f32 ulps of summation-order noise (both
        // paths accumulate in f32, in different orders); a relative term keeps the check meaningful there.
        FusedParity.RunScript(TestAdapter.ModelDir, dtype, leftPadding: [0, 2], FusedParity.Rtol(dtype), withAdapter ? Fixture : null);

    [Fact]
    public void Without_left_padding_too() => FusedParity.RunScript(TestAdapter.ModelDir, ScalarType.Float32, leftPadding: null);

    [Fact]
    public void One_row_and_three_rows_too()
    {
        FusedParity.RunScript(TestAdapter.ModelDir, ScalarType.Float32, leftPadding: null, batch: 1);
        FusedParity.RunScript(TestAdapter.ModelDir, ScalarType.Float32, leftPadding: [0, 3, 1]);
    }

    [Fact]
    public void A_session_prefilled_on_the_reference_decodes_fused_from_the_same_cache()
    {
        using var ckpt = Checkpoint.Open(TestAdapter.ModelDir);
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        manual_seed(11);
        var options = new SessionOptions(2, 32, [1, 0]);
        using var reference = (LocalBlockSession)stack.OpenSession(options);
        using var mixed = (LocalBlockSession)stack.OpenSession(options);
        var prefix = randn(2, 9, stack.Config.HiddenSize);                // [2, 9, H]
        using (FusedDecode.Disable()) reference.Step(prefix);
        using (FusedDecode.Disable()) mixed.Step(prefix);
        Assert.Equal(0, mixed.FusedSteps);
        for (int i = 0; i < 4; i++)
        {
            var x = randn(2, 1, stack.Config.HiddenSize);
            Tensor expected;
            using (FusedDecode.Disable()) expected = reference.Step(x);
            FusedParity.Close(expected, mixed.Step(x), $"decode {i}");
        }
        Assert.Equal(4, mixed.FusedSteps);
    }

    [Fact]
    public void The_switch_and_the_limits_keep_the_reference()
    {
        using var ckpt = Checkpoint.Open(TestAdapter.ModelDir);
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        using var session = (LocalBlockSession)stack.OpenSession(new SessionOptions(1, 128));
        using (FusedDecode.Disable()) session.Step(randn(1, 1, stack.Config.HiddenSize));
        session.Step(randn(1, LocalBlockSession.ShortPromptRows + 1, stack.Config.HiddenSize));   // a prompt above the short-prompt limit
        var prompts = zeros(stack.Blocks.Count, 1, 1, stack.Config.HiddenSize);
        session.Step(randn(1, 1, stack.Config.HiddenSize), new StepOptions(Prompts: prompts));   // deep prompts
        Assert.Equal(0, session.FusedSteps);
        session.Step(randn(1, MatRows.MaxRows, stack.Config.HiddenSize));
        Assert.Equal(1, session.FusedSteps);
        session.Step(randn(1, MatRows.MaxRows + 1, stack.Config.HiddenSize));   // a short prompt: two fused steps
        Assert.Equal(3, session.FusedSteps);
    }

    /// <summary>
    /// A prompt of more rows than one fused step takes, up to <see cref="LocalBlockSession.ShortPromptRows"/>, runs as
    /// consecutive fused steps (with batch rows and left padding), and equals the reference prompt and what follows it.
    /// </summary>
    [Fact]
    public void A_short_prompt_runs_as_fused_steps_and_matches_the_reference()
    {
        using var ckpt = Checkpoint.Open(TestAdapter.ModelDir);
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        manual_seed(12);
        var options = new SessionOptions(2, 40, [3, 0]);
        using var reference = (LocalBlockSession)stack.OpenSession(options);
        using var chunked = (LocalBlockSession)stack.OpenSession(options);
        var prompt = randn(2, 20, stack.Config.HiddenSize);                         // [2, 20, H]: 40 rows, steps of 8 tokens
        Tensor expected;
        using (FusedDecode.Disable()) expected = reference.Step(prompt);
        FusedParity.Close(expected, chunked.Step(prompt), "the prompt");
        Assert.Equal(3, chunked.FusedSteps);                                        // 8 + 8 + 4 tokens
        Assert.Equal(20, chunked.Position);
        var next = randn(2, 1, stack.Config.HiddenSize);                            // [2, 1, H]
        using (FusedDecode.Disable()) expected = reference.Step(next);
        FusedParity.Close(expected, chunked.Step(next), "the step after it");
    }
}
