using System.Diagnostics;
using PetalsSharp.Client;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Wire.V1;
using static TorchSharp.torch;

namespace PetalsSharp.Benchmarks;

/// <summary>Latency of one hop: Info round trips and single-token inference steps against one server process.</summary>
public static class HopBenchmark
{
    public static async Task RunAsync(BenchArgs args)
    {
        var dir = args.Get("model") ?? RepoFiles.Find(Path.Combine("tests", "PetalsSharp.Tests", "TestData", "llama-gqa"), "config.json", "pass --model DIR");
        var config = ModelConfigLoader.Load(dir);
        using var server = await ServerProcess.StartAsync(dir, 0, config.NumLayers);
        using var conn = await ServerConnection.ConnectAsync(server.Address, config, new RemoteOptions());
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < 200; i++) await conn.Client.InfoAsync(new InfoRequest());
        Console.WriteLine($"Info round trip: {sw.Elapsed.TotalMilliseconds / 200:F3} ms");
        using var remote = await RemoteSequential.ConnectAsync(config, [server.Address]);
        using var session = remote.OpenSession(new SessionOptions(1, Math.Min(250, config.MaxPositionEmbeddings)));
        var x = randn(1, 1, config.HiddenSize);
        await session.StepAsync(x);
        var times = new List<double>();
        for (int i = 0; i < 240; i++)
        {
            sw.Restart();
            using var y = await session.StepAsync(x);
            times.Add(sw.Elapsed.TotalMilliseconds);
        }
        times.Sort();
        var empty = zeros(1, 0, config.HiddenSize);
        var idle = new List<double>();
        for (int i = 0; i < 300; i++)
        {
            sw.Restart();
            using var y = await session.StepAsync(empty);
            idle.Add(sw.Elapsed.TotalMilliseconds);
        }
        idle.Sort();
        Console.WriteLine($"empty step (T=0, no compute): median {idle[idle.Count / 2]:F3} ms, p90 {idle[idle.Count * 9 / 10]:F3} ms");
        using var local = CausalLM.Load(dir);
        using var localSession = local.Blocks.OpenSession(new SessionOptions(1, 250));
        await localSession.StepAsync(x);
        var localTimes = new List<double>();
        for (int i = 0; i < 240; i++)
        {
            sw.Restart();
            using var y = await localSession.StepAsync(x);
            localTimes.Add(sw.Elapsed.TotalMilliseconds);
        }
        localTimes.Sort();
        Console.WriteLine($"same step in-process: median {localTimes[localTimes.Count / 2]:F3} ms");
        Console.WriteLine($"inference step (T=1): median {times[times.Count / 2]:F3} ms, p10 {times[times.Count / 10]:F3} ms, p90 {times[times.Count * 9 / 10]:F3} ms");
    }
}
