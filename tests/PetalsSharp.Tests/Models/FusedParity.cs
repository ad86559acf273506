using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Models.Kernels;
using PetalsSharp.Models.Lora;
using PetalsSharp.Tests.Adapters;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// What every family's fused tests do: run the same steps on a fused session and on a reference one
/// (<see cref="FusedDecode.Disable"/>) and compare them. Session scripts over a block stack, greedy decoding and
/// generation over a whole model.
/// </summary>
internal static class FusedParity
{
    /// <summary>Absolute tolerance of a session step, fused against reference.</summary>
    public const double Tolerance = 1e-4;

    /// <summary>One step of the script: new tokens, and optionally a rollback position and beam order.</summary>
    internal sealed record ScriptStep(int Tokens, int? StartFrom = null, long[]? Hypo = null);

    /// <summary>
    /// A prefix (B × 5 rows, still fused up to a batch of 3), then 1 and 2 tokens, a rollback over the last two tokens,
    /// the beams reversed, every beam continuing the last one, and one more token. Batch 2 reorders as [1, 0] then [1, 1].
    /// </summary>
    internal static ScriptStep[] Script(int batch)
    {
        long[] reversed = [.. Enumerable.Range(0, batch).Reverse().Select(i => (long)i)];
        long[] allLast = [.. Enumerable.Repeat((long)batch - 1, batch)];
        return
        [
            new(5),
            new(1),
            new(2),
            new(1, StartFrom: 6),
            new(1, Hypo: reversed),
            new(2, Hypo: allLast),
            new(1),
        ];
    }

    /// <summary>The relative tolerance of scripts that set one: a few f32 ulps on f32 weights, more on 16-bit ones.</summary>
    public static double Rtol(ScalarType dtype) => dtype == ScalarType.Float32 ? 1e-5 : 1e-4;

    /// <summary>
    /// Opens <paramref name="modelDir"/>'s blocks in <paramref name="dtype"/> (with a random tiny LoRA adapter written for
    /// <paramref name="adapterFixture"/> when set) and runs the script on them.
    /// </summary>
    public static void RunScript(string modelDir, ScalarType dtype, int[]? leftPadding, double rtol = 0, string? adapterFixture = null,
        int? batch = null)
    {
        using var ckpt = Checkpoint.Open(modelDir);
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers, dtype);
        using var adapter = adapterFixture is null
            ? null
            : LoraAdapter.Load("tiny", TestAdapter.Write(TestAdapter.NewDir(), fixture: adapterFixture), stack.Config);
        RunScript(stack, adapter, leftPadding, rtol, batch);
    }

    /// <summary>
    /// Runs <see cref="Script"/> on a reference session and a fused one and compares every step's output. The batch is
    /// <paramref name="leftPadding"/>'s length, or <paramref name="batch"/> (2 unless told) without padding.
    /// </summary>
    public static void RunScript(LocalBlockStack stack, ILinearAdapter? adapter, int[]? leftPadding, double rtol = 0, int? batch = null)
    {
        if (leftPadding is not null && batch is { } b && b != leftPadding.Length)
            throw new ArgumentException($"batch {b} but {leftPadding.Length} left paddings", nameof(batch));
        int rows = leftPadding?.Length ?? batch ?? 2;
        var script = Script(rows);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        manual_seed(7);
        var options = new SessionOptions(rows, 24, leftPadding) { Adapter = adapter };
        using var reference = (LocalBlockSession)stack.OpenSession(options);
        using var fused = (LocalBlockSession)stack.OpenSession(options);
        int step = 0;
        foreach (var s in script)
        {
            var x = randn(rows, s.Tokens, stack.Config.HiddenSize);                                    // [B, T, H]
            StepOptions Options() => new(s.Hypo is null ? null : tensor(s.Hypo), s.StartFrom);
            Tensor expected;
            using (FusedDecode.Disable()) expected = reference.Step(x, Options());
            Close(expected, fused.Step(x, Options()), $"step {step++} ({s})", rtol);
        }
        Assert.Equal(script.Length, fused.FusedSteps);
        Assert.Equal(0, reference.FusedSteps);
    }

    /// <summary>
    /// Within <see cref="Tolerance"/>, plus, when <paramref name="rtol"/> is set, that share of the expected value
    /// and of the tensor's largest value: summation-order noise scales with the magnitudes summed, so an element near
    /// zero in a row of values near 30 carries the row's noise, not its own (on an AMD EPYC machine such elements
    /// missed an element-wise bound by about 1e-5, in different tests from run to run).
    /// </summary>
    public static void Close(Tensor expected, Tensor actual, string what, double rtol = 0)
    {
        if (rtol > 0)
        {
            double largest = expected.abs().max().to(ScalarType.Float64).item<double>();
            TensorAssert.Close(expected, actual, Tolerance + rtol * largest, rtol, what);
            return;
        }
        var diff = TensorAssert.MaxAbsDiff(expected, actual);
        Assert.True(diff <= Tolerance, $"{what}: fused differs from the reference by {diff} (largest value {expected.abs().max().item<float>()})");
    }

    /// <summary>Writes a random checkpoint of <paramref name="config"/> to a temp folder, runs <paramref name="run"/> on it, deletes it.</summary>
    public static void OnRandomCheckpoint(ModelConfig config, int seed, Action<string> run)
    {
        var dir = Path.Combine(Path.GetTempPath(), "petals-fused-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            RandomCheckpoint.Write(config, dir, seed);
            run(dir);
        }
        finally
        {
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>
    /// Greedy decoding of a fixed prompt picks the same tokens on the fused path and on the reference, every step's
    /// logits agree within 1e-4, and the fused path ran.
    /// </summary>
    public static void GreedyMatches(string modelDir, string name)
    {
        using var lm = CausalLM.Load(modelDir);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var prompt = new long[] { 1, 5, 9, 14, 20, 27 };
        var fused = Greedy(lm, prompt, reference: false);
        List<(Tensor Logits, long Token)> reference;
        using (FusedDecode.Disable()) reference = Greedy(lm, prompt, reference: true);
        Assert.Equal(reference.Select(r => r.Token), fused.Select(f => f.Token));
        for (int i = 0; i < fused.Count; i++)
        {
            var diff = TensorAssert.MaxAbsDiff(reference[i].Logits, fused[i].Logits);
            Assert.True(diff <= 1e-4, $"{name} step {i}: logits differ by {diff}");
        }
    }

    /// <summary>Generation of a left-padded batch gives the same tokens on both paths.</summary>
    public static async Task GenerationMatches(string modelDir)
    {
        using var lm = CausalLM.Load(modelDir);
        var options = new GenerationOptions { MaxNewTokens = 32, IgnoreEos = true };
        var fused = await lm.GenerateAsync([[1, 2, 3, 4], [1, 7]], options);
        GenerationResult reference;
        using (FusedDecode.Disable()) reference = await lm.GenerateAsync([[1, 2, 3, 4], [1, 7]], options);
        Assert.Equal(reference.NewTokens, fused.NewTokens);
    }

    /// <summary>Prefill then 12 greedy steps in one session; each step's last logits and chosen token.</summary>
    static List<(Tensor Logits, long Token)> Greedy(CausalLM lm, long[] prompt, bool reference)
    {
        using var session = (LocalBlockSession)lm.Blocks.OpenSession(new SessionOptions(1, 32));
        var steps = new List<(Tensor, long)>();
        var ids = tensor(prompt, [1, prompt.Length]);                               // [1, T]
        for (int i = 0; i < 12; i++)
        {
            var h = session.Step(lm.Ends.Embed(ids));                                 // [1, T, H]
            var logits = lm.Ends.Logits(lm.Ends.FinalNorm(h.narrow(1, h.shape[1] - 1, 1))).reshape(-1);   // [V]
            long token = logits.argmax().item<long>();
            steps.Add((logits, token));
            ids = tensor(new[] { token }, [1, 1]);
        }
        Assert.Equal(reference ? 0 : 12, session.FusedSteps);
        return steps;
    }
}
