using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Models.Bench;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PetalsSharp.Benchmarks;

/// <summary>
/// Prefill and decode tok/s of the local engine on a ~100M-parameter model (Llama unless <c>--family</c> names
/// another registered family), in f32 and bf16 weights, and decode's weight-streaming rate divided by the memory
/// bandwidth measured in the same run (the roofline).
/// </summary>
public static class EngineBenchmark
{
    public static async Task RunAsync(BenchArgs args)
    {
        var dir = args.Get("model") ?? EnsureModel(args.Get("family") ?? "llama");
        int promptLen = args.Int("prompt", 64), newTokens = args.Int("new", 128);
        Console.WriteLine($"model: {dir}; prompt {promptLen} tokens, {newTokens} new tokens; torch threads {get_num_threads()}");
        var bandwidth = MeasureBandwidth();
        Console.WriteLine($"memory bandwidth (streaming read of 512 MiB): {bandwidth / 1e9:F1} GB/s");
        Console.WriteLine();
        // Fused (C# kernels) and reference (TorchSharp) decode, interleaved round by round on a noisy shared machine.
        var paths = (args.Get("paths") ?? "fused,reference").Split(',', StringSplitOptions.RemoveEmptyEntries);
        int rounds = args.Int("rounds", 1);
        Console.WriteLine("| weights | path | prefill tok/s | decode tok/s | decode ms/token | weight bytes/token | decode GB/s | ÷ bandwidth |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|");
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
        {
            using var lm = CausalLM.Load(dir, new ModelLoadOptions(dtype));
            var bytesPerToken = DecodeBytesPerToken(lm);
            var prompt = Enumerable.Range(0, promptLen).Select(i => (i * 7919) % (lm.Config.VocabSize - 1)).ToArray();
            for (int round = 0; round < rounds; round++)
                foreach (var path in paths)
                {
                    using var reference = path == "reference" ? PetalsSharp.Models.Kernels.FusedDecode.Disable() : null;
                    // "fused-base": the fused path as first merged (one team run per block), for A/B.
                    PetalsSharp.Models.Kernels.FusedStep.OneRunPerStep = path != "fused-base";
                    // "fused-static": every worker takes a fixed half of each phase, as before dynamic claiming.
                    PetalsSharp.Models.Kernels.FusedStep.DynamicClaims = path != "fused-static";
                    // "fused-tiles": one-row f32 products in four-row tiles instead of the address-order stream.
                    PetalsSharp.Models.Kernels.MatRows.UseRowStream = path != "fused-tiles";
                    // "fused-first": multi-row tiles prefetch the whole next tile in their first pass, as before.
                    PetalsSharp.Models.Kernels.MatRows.SpreadRows = path != "fused-first";
                    // "fused-yield": team waits yield past their spin instead of blocking.
                    PetalsSharp.Models.Kernels.WorkerTeam.BlockingWaits = path != "fused-yield";
                    var prefill = Timing.Median(() => Prefill(lm, prompt), repeats: 3);
                    // Decode time = (prefill + N steps) - prefill, so the prompt's cost is not counted twice.
                    var total = Timing.Median(() => lm.GenerateAsync([prompt], new GenerationOptions { MaxNewTokens = newTokens, IgnoreEos = true })
                        .GetAwaiter().GetResult(), repeats: 3);
                    var decodeSeconds = (total - prefill) / (newTokens - 1);
                    var gbps = bytesPerToken / decodeSeconds;
                    Console.WriteLine($"| {dtype} | {path} | {promptLen / prefill:F0} | {1 / decodeSeconds:F1} | {decodeSeconds * 1000:F2} | {bytesPerToken / 1e6:F0} MB | {gbps / 1e9:F1} | {gbps / bandwidth:F2} |");
                }
            if (args.Get("breakdown") != "false") Breakdown(lm, dtype);
            if (args.Get("phases") == "true")
                foreach (var batch in (args.Get("phase-rows") ?? "1").Split(',').Select(int.Parse))
                    PhaseProfile.Print((LocalBlockStack)lm.Blocks, dtype, batch: batch);
        }
        await Task.CompletedTask;
    }

    static void Prefill(CausalLM lm, int[] prompt)
    {
        using var scope = NewDisposeScope();
        using var session = lm.Blocks.OpenSession(new SessionOptions(1, prompt.Length + 1));
        var h = session.StepAsync(lm.Ends.Embed(tensor(prompt.Select(i => (long)i).ToArray(), [1, prompt.Length]))).AsTask().Result;
        lm.Ends.Logits(lm.Ends.FinalNorm(h.narrow(1, prompt.Length - 1, 1)));
    }

    /// <summary>Bytes a decode step must read: the blocks' weights and the LM head, of a mixture only the k experts a token is routed to.</summary>
    static long DecodeBytesPerToken(CausalLM lm) => WeightReads.PerDecodedToken(lm.Config, ((LocalBlockStack)lm.Blocks).Blocks, lm.Ends);

    /// <summary>The streaming read rate, measured as <c>petals bench</c> measures it.</summary>
    internal static double MeasureBandwidth()
    {
        var bandwidth = MemoryBandwidth.Measure(EngineBench.Threads);
        Console.WriteLine($"read bandwidth: torch sum {bandwidth.TorchSum / 1e9:F1} GB/s, C# TensorPrimitives.Sum {bandwidth.HostRead / 1e9:F1} GB/s");
        return bandwidth.Best;
    }

    /// <summary>Where a decode step's time goes: the blocks, the LM head, and everything else.</summary>
    static void Breakdown(CausalLM lm, ScalarType dtype)
    {
        var stack = (LocalBlockStack)lm.Blocks;
        using var session = (LocalBlockSession)stack.OpenSession(new SessionOptions(1, 300));
        using (var scope = NewDisposeScope()) session.Step(lm.Ends.Embed(tensor(new long[] { 1 }, [1, 1])));
        var x = lm.Ends.Embed(tensor(new long[] { 2 }, [1, 1]));
        int steps = 0;
        var blocks = Timing.Median(() =>
        {
            using var scope = NewDisposeScope();
            session.Step(x, new StepOptions(StartFromPosition: 1 + (steps++ % 50)));
        }, repeats: 21, warmup: 3);
        var head = Timing.Median(() =>
        {
            using var scope = NewDisposeScope();
            lm.Ends.Logits(lm.Ends.FinalNorm(x)).argmax(-1).item<long>();
        }, repeats: 21, warmup: 3);
        var gemv = Timing.Median(() =>
        {
            using var scope = NewDisposeScope();
            foreach (var b in stack.Blocks)
                foreach (var p in b.parameters().Where(p => p.dim() == 2)) F.linear(ones(1, 1, p.shape[1]), p.to(ScalarType.Float32));
        }, repeats: 21, warmup: 3);
        var fast = Timing.Median(() =>
        {
            using var scope = NewDisposeScope();
            foreach (var b in stack.Blocks)
                foreach (var p in b.parameters().Where(p => p.dim() == 2)) Ops.Linear(ones(1, 1, p.shape[1]), p);
        }, repeats: 21, warmup: 3);
        long matBytes = stack.Blocks.Sum(b => b.parameters().Where(p => p.dim() == 2).Sum(p => p.NumberOfElements * p.ElementSize));
        PetalsSharp.Models.Kernels.FusedStep.OneRunPerStep = true;
        long headBytes = (long)lm.Config.VocabSize * lm.Config.HiddenSize * (dtype == ScalarType.Float32 ? 4 : 2);
        Console.WriteLine($"|   breakdown ({dtype}) | blocks {blocks * 1000:F2} ms ({matBytes / blocks / 1e9:F1} GB/s of block weights) | head+norm {head * 1000:F2} ms ({headBytes / head / 1e9:F1} GB/s, {head / (head + blocks):P0} of the step) | | | | |");
        Console.WriteLine($"|   breakdown ({dtype}) | blocks {blocks * 1000:F2} ms | their matmuls: MatRows {fast * 1000:F2} ms ({matBytes / fast / 1e9:F1} GB/s), F.linear {gemv * 1000:F2} ms ({matBytes / gemv / 1e9:F1} GB/s) | head+norm {head * 1000:F2} ms | | | |");
    }

    /// <summary>
    /// The family's ~100M benchmark model (<see cref="IModelFamily.BenchmarkConfig"/>), created once in the temp
    /// folder. For Llama: hidden 768, 12 layers, 12 heads, 4 KV heads, vocab 32000.
    /// </summary>
    public static string EnsureModel(string family = "llama")
    {
        var f = ModelFamilies.Find(family)
                ?? throw new ArgumentException($"unknown family '{family}' (available: {string.Join(", ", ModelFamilies.Names)})");
        var dir = Path.Combine(Path.GetTempPath(), $"petals-bench-{family}-100m");
        if (File.Exists(Path.Combine(dir, "model.safetensors"))) return dir;
        var config = f.BenchmarkConfig();
        var parameters = f.EndTensors(config).Concat(Enumerable.Range(0, config.NumLayers).SelectMany(i => f.BlockTensors(config, i)))
            .Sum(t => t.Shape.Aggregate(1L, (a, d) => a * d));
        Console.WriteLine($"creating {dir} ({parameters / 1e6:F0}M parameters) ...");
        RandomCheckpoint.Write(config, dir, seed: 1);
        return dir;
    }
}
