using System.Diagnostics;
using PetalsSharp.Client;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Swarm;
using PetalsSharp.Testing;
using static TorchSharp.torch;

namespace PetalsSharp.Benchmarks;

/// <summary>
/// P4: 3 server processes, each behind a <see cref="LinkShaper"/> that adds a one-way delay to every link into
/// and out of it. Single-token step time with server-to-server push and without, each divided by the ideal
/// (4 one-way delays + the step's compute, measured in-process in the same run).
/// </summary>
public static class WanBenchmark
{
    public static async Task RunAsync(BenchArgs args)
    {
        var dir = args.Get("model") ?? EngineBenchmark.EnsureModel();
        double delayMs = args.Int("delay-ms", 50);
        int servers = args.Int("servers", 3), steps = args.Int("steps", 20);
        var config = ModelConfigLoader.Load(dir);
        var x = randn(1, 1, config.HiddenSize);

        double compute;
        using (var local = CausalLM.Load(dir))
            compute = await MedianStepAsync(local.Blocks, x, steps);

        var spans = Enumerable.Range(0, servers).Select(i => (config.NumLayers * i / servers, config.NumLayers * (i + 1) / servers)).ToList();
        var procs = await Task.WhenAll(spans.Select(s => ServerProcess.StartAsync(dir, s.Item1, s.Item2, "--push-peers", "127.0.0.1")));
        var shapers = await Task.WhenAll(procs.Select(p => LinkShaper.StartAsync(p.Address, TimeSpan.FromMilliseconds(delayMs))));
        try
        {
            double ideal = (servers + 1) * delayMs / 1000 + compute;
            Console.WriteLine($"model {dir}; {servers} servers, {delayMs} ms one-way on every link; in-process step compute {compute * 1000:F1} ms");
            Console.WriteLine($"ideal step = {servers + 1} × {delayMs} ms + compute = {ideal * 1000:F1} ms");
            Console.WriteLine("| mode | step ms (median) | ÷ ideal |");
            Console.WriteLine("|---|---|---|");
            foreach (var push in new[] { true, false })
            {
                using var remote = await RemoteSequential.ConnectAsync(config, shapers.Select(s => s.Address),
                    new RemoteOptions { UseServerToServer = push });
                var step = await MedianStepAsync(remote, x, steps);
                Console.WriteLine($"| {(push ? "push" : "client drives every hop")} | {step * 1000:F1} | {step / ideal:F3} |");
            }
        }
        finally
        {
            foreach (var s in shapers) await s.DisposeAsync();
            foreach (var p in procs) p.Dispose();
        }
    }

    static async Task<double> MedianStepAsync(IBlockStack blocks, Tensor x, int steps)
    {
        // Weights are memory-mapped: the first passes fault their pages in, so warm up before timing.
        const int warmup = 10;
        using var session = blocks.OpenSession(new SessionOptions(1, steps + warmup + 1));
        for (int i = 0; i < warmup; i++)
            using (var warm = await session.StepAsync(x)) { }
        var times = new List<double>();
        for (int i = 0; i < steps; i++)
        {
            var sw = Stopwatch.StartNew();
            using var y = await session.StepAsync(x);
            times.Add(sw.Elapsed.TotalSeconds);
        }
        times.Sort();
        return times[times.Count / 2];
    }
}
