using System.Diagnostics;
using PetalsSharp.Client;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Server;

namespace PetalsSharp.Benchmarks;

/// <summary>
/// P1: tok/s of the ~100M model through 3 server processes on loopback divided by single-process local tok/s,
/// with a 64-token prompt and 128 new tokens in f32, and the per-step overhead per hop; <c>--rounds</c> pairs
/// (default 5), interleaved.
/// </summary>
public static class SwarmBenchmark
{
    public static async Task RunAsync(BenchArgs args)
    {
        var dir = args.Get("model") ?? EngineBenchmark.EnsureModel();
        int promptLen = args.Int("prompt", 64), newTokens = args.Int("new", 128), servers = args.Int("servers", 3);
        var config = ModelConfigLoader.Load(dir);
        var prompt = Enumerable.Range(0, promptLen).Select(i => (i * 7919) % (config.VocabSize - 1)).ToArray();
        var options = new GenerationOptions { MaxNewTokens = newTokens, IgnoreEos = true };

        int rounds = args.Int("rounds", 5);
        using var local = CausalLM.Load(dir);
        var spans = Enumerable.Range(0, servers).Select(i => (config.NumLayers * i / servers, config.NumLayers * (i + 1) / servers)).ToList();
        var procs = await Task.WhenAll(spans.Select(s => ServerProcess.StartAsync(dir, s.Item1, s.Item2, "--push-peers", "127.0.0.1")));
        try
        {
            bool push = args.Get("no-push") is null;
            using var remote = await DistributedModel.ConnectAsync(dir, procs.Select(p => p.Address), new RemoteOptions { UseServerToServer = push });
            // One warm-up generation each (fresh server processes still run tier-0 JIT code), then local and swarm
            // alternate round by round: this box's speed drifts by tens of percent within minutes, so each round's
            // pair is measured in the same seconds and the ratio is taken per round.
            Generate(local, prompt, options);
            Generate(remote, prompt, options);
            Console.WriteLine($"model {dir}; prompt {promptLen}, new {newTokens}, f32, {servers} server processes on loopback, push {(push ? "on" : "off")}");
            Console.WriteLine("| round | local tok/s | swarm tok/s | local decode ms/step | swarm decode ms/step | swarm ÷ local | overhead per hop per step |");
            Console.WriteLine("|---|---|---|---|---|---|---|");
            var ratios = new List<double>();
            var hops = new List<double>();
            for (int r = 1; r <= rounds; r++)
            {
                var (localSeconds, localStep) = Measure(local, prompt, options);
                var (swarmSeconds, swarmStep) = Measure(remote, prompt, options);
                ratios.Add(localSeconds / swarmSeconds);
                hops.Add((swarmStep - localStep) * 1000 / servers);
                Console.WriteLine($"| {r} | {newTokens / localSeconds:F1} | {newTokens / swarmSeconds:F1} | {localStep * 1000:F2} | {swarmStep * 1000:F2} | {ratios[^1]:F3} | {hops[^1]:F2} ms |");
            }
            Console.WriteLine($"swarm ÷ local tok/s: median {Median(ratios):F3} (min {ratios.Min():F3}, max {ratios.Max():F3}); overhead per hop per step: median {Median(hops):F2} ms");
            if (args.Get("split") == "true")
                for (int r = 0; r < 2; r++)
                {
                    Split("local", local, prompt, newTokens);
                    Split("swarm", remote, prompt, newTokens);
                }
        }
        finally
        {
            foreach (var p in procs) p.Dispose();
        }
    }

    internal static double Generate(CausalLM lm, int[] prompt, GenerationOptions options)
    {
        var sw = Stopwatch.StartNew();
        lm.GenerateAsync([prompt], options).GetAwaiter().GetResult();
        return sw.Elapsed.TotalSeconds;
    }

    /// <summary>Where a greedy decode step's time goes: the blocks (local or remote) and the ends around them, mean and median ms.</summary>
    static void Split(string name, CausalLM lm, int[] prompt, int newTokens)
    {
        using var noGrad = TorchSharp.torch.no_grad();
        using var session = lm.Blocks.OpenSession(new SessionOptions(1, prompt.Length + newTokens + 1));
        long next;
        using (TorchSharp.torch.NewDisposeScope())
        {
            var h = session.StepAsync(lm.Ends.Embed(TorchSharp.torch.tensor(prompt.Select(i => (long)i).ToArray(), [1, prompt.Length]))).AsTask().Result;
            next = lm.Ends.Logits(lm.Ends.FinalNorm(h.narrow(1, prompt.Length - 1, 1))).argmax(-1).item<long>();
        }
        var blocks = new List<double>();
        var ends = new List<double>();
        for (int i = 0; i < newTokens; i++)
        {
            using var scope = TorchSharp.torch.NewDisposeScope();
            long t0 = Stopwatch.GetTimestamp();
            var x = lm.Ends.Embed(TorchSharp.torch.tensor(new[] { next }, [1, 1]));   // [1, 1, H]
            long t1 = Stopwatch.GetTimestamp();
            var h = session.StepAsync(x).AsTask().Result;                                // [1, 1, H]
            long t2 = Stopwatch.GetTimestamp();
            next = lm.Ends.Logits(lm.Ends.FinalNorm(h)).argmax(-1).item<long>();
            long t3 = Stopwatch.GetTimestamp();
            blocks.Add(Stopwatch.GetElapsedTime(t1, t2).TotalMilliseconds);
            ends.Add(Stopwatch.GetElapsedTime(t0, t1).TotalMilliseconds + Stopwatch.GetElapsedTime(t2, t3).TotalMilliseconds);
        }
        Console.WriteLine($"{name}: blocks mean {blocks.Average():F2} median {Median(blocks):F2} ms; embed+head mean {ends.Average():F2} median {Median(ends):F2} ms");
    }

    internal static double Median(List<double> values) => values.Order().ElementAt(values.Count / 2);

    /// <summary>Seconds of one whole generation, and its decode seconds per step (a prefill-only run subtracted).</summary>
    internal static (double Total, double Step) Measure(CausalLM lm, int[] prompt, GenerationOptions options)
    {
        double prefill = Generate(lm, prompt, options with { MaxNewTokens = 1 });
        double total = Generate(lm, prompt, options);
        return (total, (total - prefill) / (options.MaxNewTokens - 1));
    }
}
