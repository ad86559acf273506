using System.Diagnostics;
using PetalsSharp.Client;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Server;

namespace PetalsSharp.Benchmarks;

/// <summary>
/// P1: tok/s of the ~100M model through 3 server processes on loopback divided by single-process local tok/s,
/// with a 64-token prompt and 128 new tokens in f32, and the per-step overhead per hop.
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

        double localSeconds, localPrefill;
        using (var local = CausalLM.Load(dir))
            (localSeconds, localPrefill) = Measure(local, prompt, options);

        var spans = Enumerable.Range(0, servers).Select(i => (config.NumLayers * i / servers, config.NumLayers * (i + 1) / servers)).ToList();
        var procs = await Task.WhenAll(spans.Select(s => ServerProcess.StartAsync(dir, s.Item1, s.Item2, "--push-peers", "127.0.0.1")));
        try
        {
            bool push = args.Get("no-push") is null;
            using var remote = await DistributedModel.ConnectAsync(dir, procs.Select(p => p.Address), new RemoteOptions { UseServerToServer = push });
            var (swarmSeconds, swarmPrefill) = Measure(remote, prompt, options);
            double localStep = (localSeconds - localPrefill) / (newTokens - 1), swarmStep = (swarmSeconds - swarmPrefill) / (newTokens - 1);
            Console.WriteLine($"model {dir}; prompt {promptLen}, new {newTokens}, f32, {servers} server processes on loopback, push {(push ? "on" : "off")}");
            Console.WriteLine("| run | total s | tok/s (new tokens ÷ total) | decode ms/step |");
            Console.WriteLine("|---|---|---|---|");
            Console.WriteLine($"| local, one process | {localSeconds:F2} | {newTokens / localSeconds:F1} | {localStep * 1000:F2} |");
            Console.WriteLine($"| swarm, {servers} servers | {swarmSeconds:F2} | {newTokens / swarmSeconds:F1} | {swarmStep * 1000:F2} |");
            Console.WriteLine($"swarm ÷ local tok/s = {localSeconds / swarmSeconds:F3}; overhead per hop per step = {(swarmStep - localStep) * 1000 / servers:F2} ms");
        }
        finally
        {
            foreach (var p in procs) p.Dispose();
        }
    }

    /// <summary>Median (of 3, after a warm-up) total seconds of a generation, and of its prefill alone.</summary>
    static (double Total, double Prefill) Measure(CausalLM lm, int[] prompt, GenerationOptions options)
    {
        var total = Timing.Median(() => lm.GenerateAsync([prompt], options).GetAwaiter().GetResult(), repeats: 3);
        var prefill = Timing.Median(() => lm.GenerateAsync([prompt], options with { MaxNewTokens = 1 }).GetAwaiter().GetResult(), repeats: 3);
        return (total, prefill);
    }
}
