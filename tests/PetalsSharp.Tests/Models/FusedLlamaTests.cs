using PetalsSharp.Models;
using PetalsSharp.Models.Kernels;
using PetalsSharp.Models.Lora;
using PetalsSharp.Tests.Adapters;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// The fused Llama decode path is pinned to the TorchSharp reference, session step by session step: per weight dtype,
/// with and without a LoRA adapter, over a prefix then 1 then 2 tokens, a rollback and beam reorders, with left padding
/// and grouped-query heads (llama-gqa: 4 query heads over 2 KV heads).
/// </summary>
public sealed class FusedLlamaTests
{
    const double Tolerance = 1e-4;

    /// <summary>One step of the script: new tokens, and optionally a rollback position and beam order.</summary>
    internal sealed record ScriptStep(int Tokens, int? StartFrom = null, long[]? Hypo = null);

    internal static readonly ScriptStep[] Script =
    [
        new(5),                          // prefix: 2 × 5 = 10 rows, still fused
        new(1),
        new(2),
        new(1, StartFrom: 6),            // rollback over the last two tokens
        new(1, Hypo: [1, 0]),            // beams swap
        new(2, Hypo: [1, 1]),
        new(1),
    ];

    [Theory]
    [InlineData(ScalarType.Float32, false)]
    [InlineData(ScalarType.Float32, true)]
    [InlineData(ScalarType.BFloat16, false)]
    [InlineData(ScalarType.BFloat16, true)]
    [InlineData(ScalarType.Float16, false)]
    [InlineData(ScalarType.Float16, true)]
    public void Session_steps_match_the_reference(ScalarType dtype, bool withAdapter)
    {
        using var ckpt = Checkpoint.Open(TestAdapter.ModelDir);
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers, dtype);
        using var adapter = withAdapter ? LoraAdapter.Load("tiny", TestAdapter.Write(TestAdapter.NewDir()), stack.Config) : null;
        // The adapter grows activations to ~30, where 1e-4 is a few dozen f32 ulps of summation-order noise (both
        // paths accumulate in f32, in different orders); a relative term keeps the check meaningful there.
        RunScript(stack, adapter, leftPadding: [0, 2], rtol: dtype == ScalarType.Float32 ? 1e-5 : 1e-4);
    }

    [Fact]
    public void Without_left_padding_too()
    {
        using var ckpt = Checkpoint.Open(TestAdapter.ModelDir);
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers);
        RunScript(stack, null, leftPadding: null);
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
        var prefix = randn(2, 9, stack.Config.HiddenSize);                // 18 rows: above the fused limit anyway
        using (FusedDecode.Disable()) reference.Step(prefix);
        mixed.Step(prefix);
        Assert.Equal(0, mixed.FusedSteps);
        for (int i = 0; i < 4; i++)
        {
            var x = randn(2, 1, stack.Config.HiddenSize);
            Tensor expected;
            using (FusedDecode.Disable()) expected = reference.Step(x);
            Close(expected, mixed.Step(x), $"decode {i}");
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
        using var session = (LocalBlockSession)stack.OpenSession(new SessionOptions(1, 64));
        using (FusedDecode.Disable()) session.Step(randn(1, 1, stack.Config.HiddenSize));
        session.Step(randn(1, MatRows.MaxRows + 1, stack.Config.HiddenSize));   // prefill above the row limit
        var prompts = zeros(stack.Blocks.Count, 1, 1, stack.Config.HiddenSize);
        session.Step(randn(1, 1, stack.Config.HiddenSize), new StepOptions(Prompts: prompts));   // deep prompts
        Assert.Equal(0, session.FusedSteps);
        session.Step(randn(1, MatRows.MaxRows, stack.Config.HiddenSize));
        Assert.Equal(1, session.FusedSteps);
    }

    /// <summary>Runs <see cref="Script"/> on a reference session and a fused one and compares every step's output.</summary>
    internal static void RunScript(LocalBlockStack stack, ILinearAdapter? adapter, int[]? leftPadding, int batch = 2, double rtol = 0)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        manual_seed(7);
        var options = new SessionOptions(batch, 24, leftPadding) { Adapter = adapter };
        using var reference = (LocalBlockSession)stack.OpenSession(options);
        using var fused = (LocalBlockSession)stack.OpenSession(options);
        int step = 0;
        foreach (var s in Script)
        {
            var x = randn(batch, s.Tokens, stack.Config.HiddenSize);                                   // [B, T, H]
            StepOptions Options() => new(s.Hypo is null ? null : tensor(s.Hypo), s.StartFrom);
            Tensor expected;
            using (FusedDecode.Disable()) expected = reference.Step(x, Options());
            Close(expected, fused.Step(x, Options()), $"step {step++} ({s})", rtol);
        }
        Assert.Equal(Script.Length, fused.FusedSteps);
        Assert.Equal(0, reference.FusedSteps);
    }

    static void Close(Tensor expected, Tensor actual, string what, double rtol = 0)
    {
        if (rtol > 0)
        {
            TensorAssert.Close(expected, actual, Tolerance, rtol, what);
            return;
        }
        var diff = TensorAssert.MaxAbsDiff(expected, actual);
        Assert.True(diff <= Tolerance, $"{what}: fused differs from the reference by {diff} (largest value {expected.abs().max().item<float>()})");
    }
}
