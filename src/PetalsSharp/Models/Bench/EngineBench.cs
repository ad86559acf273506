using System.Diagnostics;
using static TorchSharp.torch;

namespace PetalsSharp.Models.Bench;

/// <summary>What <see cref="EngineBench.Run"/> measures.</summary>
/// <param name="PromptTokens">Tokens of the prefill step.</param>
/// <param name="NewTokens">Single-token cached steps after it.</param>
/// <param name="Repeats">Timed runs (after one warm-up); the medians are reported.</param>
public sealed record EngineBenchOptions(int PromptTokens = 64, int NewTokens = 128, int Repeats = 3)
{
    public void Validate()
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(PromptTokens, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(NewTokens, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(Repeats, 1);
    }
}

/// <summary>How far a bench has got: <paramref name="Done"/> of <paramref name="Total"/> steps (a prefill is one).</summary>
public readonly record struct BenchProgress(string Phase, int Done, int Total);

/// <summary>One bench of the local engine (see <see cref="EngineBench.Run"/>).</summary>
/// <param name="PrefillTokensPerSecond">Prompt tokens per second of the prefill step (median).</param>
/// <param name="DecodeTokensPerSecond">Single-token cached steps per second (median).</param>
/// <param name="WeightBytesPerToken">Weight bytes one decode step reads (<see cref="WeightReads.PerDecodedToken"/>).</param>
/// <param name="WeightBytes">Bytes of every weight held (<see cref="WeightReads.Held"/>).</param>
/// <param name="Bandwidth">The machine's streaming read rate, measured after the runs.</param>
/// <param name="Threads">Threads the engine computes with.</param>
/// <param name="PeakRssBytes">The process's peak resident set after loading and running, before the bandwidth probe.</param>
public sealed record EngineBenchResult(double PrefillTokensPerSecond, double DecodeTokensPerSecond, long WeightBytesPerToken,
    long WeightBytes, MemoryBandwidth Bandwidth, int Threads, long PeakRssBytes)
{
    /// <summary>Weight bytes streamed per second while decoding, as a share of the bandwidth: 1 is the memory roofline.</summary>
    public double DecodeReadFraction => WeightBytesPerToken * DecodeTokensPerSecond / Bandwidth.Best;
}

/// <summary>
/// The numbers a server operator compares machines by, as llama.cpp's <c>llama-bench</c> reports them: prefill and
/// decode tokens per second of the local engine, the weight bytes a decoded token reads and how close that comes to
/// the memory bandwidth measured in the same process, the peak RSS, and the threads used. The benchmarks project
/// and <c>petals bench</c> both measure through here.
/// </summary>
public static class EngineBench
{
    /// <summary>
    /// Threads a decoded token computes with: the fused kernels' worker team (prefill runs on libtorch's intra-op
    /// pool, sized alike to the cores). The bandwidth probe reads with as many, so the roof and the decode are
    /// measured alike.
    /// </summary>
    public static int Threads => Kernels.WorkerTeam.Shared.Size;

    /// <summary>
    /// Benches <paramref name="blocks"/>; with <paramref name="ends"/> the whole model runs (token ids in, greedy
    /// token out, through the embeddings, final norm and LM head), without them only the span (fixed hidden states
    /// in, as a server receives them). Each run opens a fresh session: one prefill of the prompt, then single-token
    /// cached steps. One untimed warm-up run comes first, then <see cref="PromptWarmUps"/> untimed prompts.
    /// </summary>
    public static EngineBenchResult Run(LocalBlockStack blocks, ModelEnds? ends, EngineBenchOptions options,
        IProgress<BenchProgress>? progress = null)
    {
        options.Validate();
        if (ends is not null && (blocks.Start != 0 || blocks.End != blocks.Config.NumLayers))
            throw new ArgumentException($"the ends run with the whole model, not blocks {blocks.Start}:{blocks.End}");
        int perRun = 1 + options.NewTokens, warmPrompts = PromptWarmUps * 2;
        int total = warmPrompts + (options.Repeats + 1) * perRun;
        var prefill = new double[options.Repeats];
        var decode = new double[options.Repeats];
        for (int r = -1; r < options.Repeats; r++)
        {
            var phase = r < 0 ? "warm-up" : $"run {r + 1}/{options.Repeats}";
            int done = (r < 0 ? 0 : warmPrompts) + (r + 1) * perRun;
            var (p, d) = RunOnce(blocks, ends, options, i => progress?.Report(new BenchProgress(phase, done + i, total)));
            if (r < 0)
            {
                int start = perRun;
                for (int k = 0; k < PromptWarmUps; k++, start += 2)
                    RunOnce(blocks, ends, options with { NewTokens = 1 }, i => progress?.Report(new BenchProgress(phase, start + i, total)));
                continue;
            }
            prefill[r] = p;
            decode[r] = d;
        }
        long peak = ProcessMemory.PeakRssBytes();   // the probe's buffers below are the bench's, not the engine's
        progress?.Report(new BenchProgress("memory bandwidth", total, total));
        var bandwidth = MemoryBandwidth.Measure(Threads);
        return new EngineBenchResult(options.PromptTokens / Median(prefill), options.NewTokens / Median(decode),
            WeightReads.PerDecodedToken(blocks.Config, blocks.Blocks, ends), WeightReads.Held(blocks.Blocks, ends),
            bandwidth, Threads, peak);
    }

    /// <summary>
    /// Extra prompt-only runs after the warm-up run. The runtime's tiered JIT reaches optimized code for the prompt path
    /// later than for decoding, which one run steps 128 times: with the warm-up run alone, prefill of the 100M model in
    /// f32 measured 825–953 tok/s on a Zen 5 box (2026-12-03), with four more prompts 990–1013, and with
    /// <c>DOTNET_TieredCompilation=0</c> (everything optimized from the start) 994–1061.
    /// </summary>
    const int PromptWarmUps = 4;

    /// <summary>
    /// Seconds of the prefill step and of all decode steps of one fresh session, untimed by anything else: what
    /// <see cref="Run"/> repeats. A side-by-side comparison with another engine in the same process alternates these.
    /// </summary>
    public static (double Prefill, double Decode) RunOnce(LocalBlockStack blocks, ModelEnds? ends, EngineBenchOptions options, Action<int>? stepped = null)
    {
        using var noGrad = no_grad();
        int promptLength = options.PromptTokens, hidden = blocks.Config.HiddenSize;
        using var session = (LocalBlockSession)blocks.OpenSession(new SessionOptions(1, promptLength + options.NewTokens));
        using var spanInput = ends is null ? Pattern(promptLength + 1, hidden) : null;   // [1, P+1, H]

        var sw = Stopwatch.StartNew();
        long next;
        using (NewDisposeScope())
        {
            var x = ends is null
                ? spanInput!.narrow(1, 0, promptLength)                                      // [1, P, H]
                : ends.Embed(tensor(PromptIds(promptLength, blocks.Config.VocabSize), [1, promptLength])); // [1, P, H]
            var h = session.Step(x);                                                         // [1, P, H]
            next = ends is null ? 0 : Greedy(ends, h.narrow(1, promptLength - 1, 1));
        }
        double prefillSeconds = sw.Elapsed.TotalSeconds;
        stepped?.Invoke(1);

        sw.Restart();
        for (int i = 0; i < options.NewTokens; i++)
        {
            using var scope = NewDisposeScope();
            var x = ends is null
                ? spanInput!.narrow(1, promptLength, 1)                                      // [1, 1, H]
                : ends.Embed(tensor(new[] { next }, [1, 1]));                                // [1, 1, H]
            var h = session.Step(x);                                                         // [1, 1, H]
            if (ends is not null) next = Greedy(ends, h);
            stepped?.Invoke(2 + i);
        }
        return (prefillSeconds, sw.Elapsed.TotalSeconds);
    }

    /// <summary>The argmax token of the last hidden state <c>h [1, 1, H]</c>, as greedy decoding picks it.</summary>
    static long Greedy(ModelEnds ends, Tensor h) => ends.Logits(ends.FinalNorm(h)).argmax(-1).item<long>(); // [1, 1, V] → [1, 1]

    /// <summary>Spread-out token ids, not all the same row of the embeddings.</summary>
    static long[] PromptIds(int length, int vocab) => Enumerable.Range(0, length).Select(i => (long)((i * 7919L + 1) % vocab)).ToArray();

    /// <summary>Deterministic hidden states of unit scale, <c>[1, T, H]</c>: a span's input, as a server receives it.</summary>
    static Tensor Pattern(int tokens, int hidden)
    {
        using var scope = NewDisposeScope();
        return arange((long)tokens * hidden, ScalarType.Float32).mul(0.37).sin().view(1, tokens, hidden).MoveToOuterDisposeScope();
    }

    static double Median(double[] values)
    {
        var sorted = values.Order().ToArray();
        int n = sorted.Length;
        return Math.Max(n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2, 1e-9);
    }
}
