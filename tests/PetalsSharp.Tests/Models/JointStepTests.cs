using PetalsSharp.Models;
using PetalsSharp.Models.Kernels;
using PetalsSharp.Models.Lora;
using PetalsSharp.Tests.Adapters;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// Continuous batching (<see cref="JointSteps"/>): sessions at different positions, batch sizes, lengths and padding,
/// stepped together in one fused pass, each get what they get alone on the reference path, through decode steps, a
/// beam reorder, a rollback and two-token steps; a step that fails its checks leaves the others' results alone.
/// </summary>
public sealed class JointStepTests
{
    /// <summary>A session of the mix: batch rows, max length, left padding, prefix tokens.</summary>
    sealed record Spec(int Batch, int MaxLength, int[]? Padding, int Prefix);

    static readonly Spec[] Mix = [new(2, 24, [0, 2], 5), new(1, 20, null, 3), new(1, 32, null, 9), new(3, 28, [1, 0, 0], 2)];

    [Theory]
    [InlineData("llama-gqa", false)]
    [InlineData("llama-gqa", true)]
    [InlineData("mixtral", false)]
    [InlineData("mixtral", true)]
    [InlineData("falcon-new", false)]
    [InlineData("bloom", false)]
    [InlineData("bloom", true)]
    [InlineData("mistral", true)]
    [InlineData("qwen2", true)]
    public void Sessions_stepped_together_match_each_one_alone(string fixture, bool withAdapter)
    {
        using var ckpt = Checkpoint.Open(TestData.Path(fixture));
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers, ScalarType.Float32);
        using var adapter = withAdapter ? LoraAdapter.Load("tiny", TestAdapter.Write(TestAdapter.NewDir(), fixture: fixture), stack.Config) : null;
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        manual_seed(5);
        int hidden = stack.Config.HiddenSize;
        var options = Mix.Select(m => new SessionOptions(m.Batch, m.MaxLength, m.Padding) { Adapter = adapter }).ToArray();
        var alone = options.Select(o => (LocalBlockSession)stack.OpenSession(o)).ToArray();
        var joined = options.Select(o => (LocalBlockSession)stack.OpenSession(o)).ToArray();
        var single = options.Select(o => (LocalBlockSession)stack.OpenSession(o)).ToArray();   // fused, one session a step
        using var joint = new FusedStep(WorkerTeam.Shared, adapter);
        try
        {
            for (int i = 0; i < Mix.Length; i++)
            {
                var prefix = randn(Mix[i].Batch, Mix[i].Prefix, hidden);                  // [B, P, H]
                using (FusedDecode.Disable()) alone[i].Step(prefix);
                joined[i].Step(prefix);
                single[i].Step(prefix);
            }
            // Rounds: new tokens per step, then per-session extras (a beam reorder on session 0, a rollback on 2).
            var rounds = new (int Tokens, bool Reorder, bool Rollback)[] { (1, false, false), (1, true, false), (2, false, true), (1, false, false), (3, false, false) };
            int round = 0;
            foreach (var (tokens, reorder, rollback) in rounds)
            {
                var steps = new List<(LocalBlockSession, Tensor, StepOptions?)>();
                var expected = new List<Tensor>();
                var fusedAlone = new List<Tensor>();
                for (int i = 0; i < Mix.Length; i++)
                {
                    if (Mix[i].Batch * tokens > 4) continue;   // the rest sit this round out, as a busy server's idle sessions do
                    var x = randn(Mix[i].Batch, tokens, hidden);                           // [B, T, H]
                    StepOptions Options() => new(reorder && i == 0 ? tensor(new long[] { 1, 0 }) : null,
                        rollback && i == 2 ? joined[i].Position - 2 : null);
                    using (FusedDecode.Disable()) expected.Add(alone[i].Step(x, Options()));
                    fusedAlone.Add(single[i].Step(x, Options()));
                    steps.Add((joined[i], x, Options()));
                }
                Assert.NotNull(JointSteps.KeyOf(joined[0], (Tensor)steps[0].Item2, null));
                var outcomes = JointSteps.Run(steps, joint);
                for (int j = 0; j < steps.Count; j++)
                {
                    Assert.Null(outcomes[j].Error);
                    FusedParity.Close(fusedAlone[j], outcomes[j].Output!, $"{fixture} round {round} step {j}, against the session's fused step alone");
                    CloseToReference(expected[j], outcomes[j].Output!, $"{fixture} round {round} step {j}", withAdapter);
                    Assert.Equal(steps[j].Item1.Position, alone[Array.IndexOf(joined, steps[j].Item1)].Position);
                }
                round++;
            }
            Assert.True(joint.IsJoint);
        }
        finally
        {
            foreach (var s in alone.Concat(joined).Concat(single)) s.Dispose();
        }
    }

    /// <summary>
    /// Within 1e-4 of the reference; with an adapter also 2e-5 of the largest value: adapters grow activations (BLOOM's
    /// reach ~30), where 1e-4 sits below the summation-order noise that both fused paths share.
    /// </summary>
    static void CloseToReference(Tensor expected, Tensor actual, string what, bool adapter)
    {
        if (!adapter)
        {
            FusedParity.Close(expected, actual, $"{what}, against the reference");
            return;
        }
        double diff = TensorAssert.MaxAbsDiff(expected, actual), scale = expected.abs().max().item<float>();
        Assert.True(diff <= FusedParity.Tolerance + 2e-5 * scale, $"{what}: {diff} against the reference (largest {scale})");
    }

    [Fact]
    public void Mixtral_sessions_with_different_adapters_do_not_share_a_pass()
    {
        using var ckpt = Checkpoint.Open(TestData.Path("mixtral"));
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers, ScalarType.Float32);
        using var adapter = LoraAdapter.Load("tiny", TestAdapter.Write(TestAdapter.NewDir(), fixture: "mixtral"), stack.Config);
        using var scope = NewDisposeScope();
        using var a = (LocalBlockSession)stack.OpenSession(new SessionOptions(1, 8));
        using var b = (LocalBlockSession)stack.OpenSession(new SessionOptions(1, 8) { Adapter = adapter });
        var one = randn(1, 1, stack.Config.HiddenSize);
        // Experts see rows gathered across sessions, so one pass could not give each row its own adapter.
        Assert.NotEqual(JointSteps.KeyOf(a, one, null), JointSteps.KeyOf(b, one, null));
    }

    [Theory]
    [InlineData("llama-gqa")]
    [InlineData("falcon-new")]
    [InlineData("bloom")]
    [InlineData("qwen2")]
    public void Sessions_with_different_adapters_share_a_pass_each_with_its_own(string fixture)
    {
        using var ckpt = Checkpoint.Open(TestData.Path(fixture));
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers, ScalarType.Float32);
        using var first = LoraAdapter.Load("first", TestAdapter.Write(TestAdapter.NewDir(), seed: 1, fixture: fixture), stack.Config);
        using var second = LoraAdapter.Load("second", TestAdapter.Write(TestAdapter.NewDir(), config: c => c["r"] = 8, seed: 2, fixture: fixture), stack.Config);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        manual_seed(13);
        int hidden = stack.Config.HiddenSize;
        LoraAdapter?[] adapters = [first, null, second, first];
        var options = adapters.Select((a, i) => new SessionOptions(i == 2 ? 2 : 1, 24, i == 2 ? [0, 1] : null) { Adapter = a }).ToArray();
        var single = options.Select(o => (LocalBlockSession)stack.OpenSession(o)).ToArray();
        var joined = options.Select(o => (LocalBlockSession)stack.OpenSession(o)).ToArray();
        var reference = options.Select(o => (LocalBlockSession)stack.OpenSession(o)).ToArray();
        using var joint = new FusedStep(WorkerTeam.Shared, null);
        try
        {
            for (int i = 0; i < options.Length; i++)
            {
                var prefix = randn(options[i].Batch, 3 + i, hidden);                               // [B, P, H]
                single[i].Step(prefix);
                joined[i].Step(prefix);
                using (FusedDecode.Disable()) reference[i].Step(prefix);
            }
            Assert.NotNull(JointSteps.KeyOf(joined[0], randn(1, 1, hidden), null));
            Assert.Equal(JointSteps.KeyOf(joined[0], randn(1, 1, hidden), null), JointSteps.KeyOf(joined[1], randn(1, 1, hidden), null));
            for (int round = 0; round < 3; round++)
            {
                var steps = new List<(LocalBlockSession, Tensor, StepOptions?)>();
                var alone = new List<Tensor>();
                var expected = new List<Tensor>();
                for (int i = 0; i < options.Length; i++)
                {
                    var x = randn(options[i].Batch, 1, hidden);                                   // [B, 1, H]
                    alone.Add(single[i].Step(x));
                    using (FusedDecode.Disable()) expected.Add(reference[i].Step(x));
                    steps.Add((joined[i], x, null));
                }
                var outcomes = JointSteps.Run(steps, joint);
                for (int j = 0; j < steps.Count; j++)
                {
                    Assert.Null(outcomes[j].Error);
                    FusedParity.Close(alone[j], outcomes[j].Output!, $"{fixture} round {round} session {j}, against its fused step alone");
                    CloseToReference(expected[j], outcomes[j].Output!, $"{fixture} round {round} session {j}", adapter: true);
                }
            }
        }
        finally
        {
            foreach (var s in single.Concat(joined).Concat(reference)) s.Dispose();
        }
    }

    [Fact]
    public void A_step_that_fails_its_checks_gets_its_error_and_the_others_still_run()
    {
        using var ckpt = Checkpoint.Open(TestData.Path("llama-gqa"));
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers, ScalarType.Float32);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        int hidden = stack.Config.HiddenSize;
        using var a = (LocalBlockSession)stack.OpenSession(new SessionOptions(1, 8));
        using var b = (LocalBlockSession)stack.OpenSession(new SessionOptions(1, 8));
        using var reference = (LocalBlockSession)stack.OpenSession(new SessionOptions(1, 8));
        using var joint = new FusedStep(WorkerTeam.Shared, null);
        var x = randn(1, 1, hidden);                                                          // [1, 1, H]
        var outcomes = JointSteps.Run([(a, x, null), (b, x, new StepOptions(StartFromPosition: 3))], joint);
        Assert.Null(outcomes[0].Error);
        Assert.IsAssignableFrom<ArgumentException>(outcomes[1].Error);
        Assert.Equal((1, 0), (a.Position, b.Position));
        using (FusedDecode.Disable()) FusedParity.Close(reference.Step(x), outcomes[0].Output!, "the step that passed");
    }

    [Fact]
    public void Steps_join_only_on_the_same_blocks_tokens_and_adapter()
    {
        using var ckpt = Checkpoint.Open(TestData.Path("llama-gqa"));
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers, ScalarType.Float32);
        using var slice = stack.Slice(0, 1);
        using var adapter = LoraAdapter.Load("tiny", TestAdapter.Write(TestAdapter.NewDir(), fixture: "llama-gqa"), stack.Config);
        using var scope = NewDisposeScope();
        int hidden = stack.Config.HiddenSize;
        using var a = (LocalBlockSession)stack.OpenSession(new SessionOptions(1, 8));
        using var b = (LocalBlockSession)stack.OpenSession(new SessionOptions(2, 8, [1, 0]));
        using var c = (LocalBlockSession)stack.OpenSession(new SessionOptions(1, 8) { Adapter = adapter });
        using var d = (LocalBlockSession)slice.OpenSession(new SessionOptions(1, 8));
        var one = randn(1, 1, hidden);
        Assert.Equal(JointSteps.KeyOf(a, one, null), JointSteps.KeyOf(b, randn(2, 1, hidden), null));
        Assert.NotEqual(JointSteps.KeyOf(a, one, null), JointSteps.KeyOf(a, randn(1, 2, hidden), null));
        Assert.Equal(JointSteps.KeyOf(a, one, null), JointSteps.KeyOf(c, one, null));         // each brings its adapter to the pass
        Assert.NotEqual(JointSteps.KeyOf(a, one, null), JointSteps.KeyOf(d, one, null));
        Assert.Null(JointSteps.KeyOf(a, randn(1, 17, hidden), null));                          // more rows than one pass takes
        Assert.Null(JointSteps.KeyOf(a, one, new StepOptions(OnBlockOutput: (_, _) => { })));
        using (FusedDecode.Disable()) Assert.Null(JointSteps.KeyOf(a, one, null));
    }
}
