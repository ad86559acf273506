using System.Diagnostics;
using PetalsSharp.Client;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Testing;
using PetalsSharp.Wire.V1;
using static TorchSharp.torch;

namespace PetalsSharp.Benchmarks;

/// <summary>
/// What a relayed hop costs on loopback (issue 20): one server dialed directly and one with no inbound port behind
/// a relay process, same blocks; Info round trips and single-token steps through each, interleaved in rounds.
/// </summary>
public static class RelayBenchmark
{
    public static async Task RunAsync(BenchArgs args)
    {
        var dir = args.Get("model") ?? PetalsSharp.Cli.Commands.DemoModel.Ensure();
        int rounds = args.Int("rounds", 5), steps = args.Int("steps", 200);
        var config = ModelConfigLoader.Load(dir);
        using var bootstrap = ChildProcess.Start("dht", "--host", "127.0.0.1", "--port", "0");
        var peers = await bootstrap.WaitForLineAsync("initial peers: ");
        using var relay = ChildProcess.Start("dht", "--host", "127.0.0.1", "--port", "0", "--relay", "--initial-peers", peers);
        await relay.WaitForLineAsync("relay: ");
        using var direct = await ServerProcess.StartAsync(dir, 0, config.NumLayers, "--initial-peers", peers, "--throughput", "100");
        using var relayed = await ServerProcess.StartAsync(dir, 0, config.NumLayers, "--initial-peers", peers, "--throughput", "100", "--reachability", "relay");
        const string marker = "reachable at ";
        var line = relayed.Log.Split('\n').First(l => l.StartsWith(marker, StringComparison.Ordinal));
        var relayedAddress = line[marker.Length..line.IndexOf(' ', marker.Length)];
        Console.WriteLine($"direct {direct.Address}, relayed {relayedAddress} ({line.Trim()})");

        using var directConn = await ServerConnection.ConnectAsync(direct.Address, config, new RemoteOptions());
        using var relayedConn = await ServerConnection.ConnectAsync(relayedAddress, config, new RemoteOptions());
        using var directStack = await RemoteSequential.ConnectAsync(config, [direct.Address]);
        using var relayedStack = await RemoteSequential.ConnectAsync(config, [relayedAddress]);
        var x = randn(1, 1, config.HiddenSize);                                          // [1, 1, H]
        var info = (Direct: new List<double>(), Relayed: new List<double>());
        var step = (Direct: new List<double>(), Relayed: new List<double>());
        // Round 0 warms up both paths (JIT, connections, TLS sessions) and is not counted.
        for (int round = 0; round <= rounds; round++)
        {
            foreach (var relayedSide in new[] { false, true })
            {
                var conn = relayedSide ? relayedConn : directConn;
                var stack = relayedSide ? relayedStack : directStack;
                var sw = Stopwatch.StartNew();
                for (int i = 0; i < steps; i++) await conn.Client.InfoAsync(new InfoRequest());
                double infoMs = sw.Elapsed.TotalMilliseconds / steps;
                using var session = stack.OpenSession(new SessionOptions(1, steps + 8));
                using (var warm = await session.StepAsync(x)) { }
                var times = new List<double>();
                for (int i = 0; i < steps - 1; i++)
                {
                    sw.Restart();
                    using var y = await session.StepAsync(x);                           // [1, 1, H]
                    times.Add(sw.Elapsed.TotalMilliseconds);
                }
                times.Sort();
                double stepMs = times[times.Count / 2];
                if (round == 0) continue;
                (relayedSide ? info.Relayed : info.Direct).Add(infoMs);
                (relayedSide ? step.Relayed : step.Direct).Add(stepMs);
                Console.WriteLine($"round {round} {(relayedSide ? "relayed" : "direct ")}: Info {infoMs:F3} ms, step median {stepMs:F3} ms");
            }
        }
        static double Median(List<double> v) => v.Order().ElementAt(v.Count / 2);
        Console.WriteLine($"Info round trip: direct {Median(info.Direct):F3} ms, relayed {Median(info.Relayed):F3} ms, extra {Median(info.Relayed) - Median(info.Direct):F3} ms");
        Console.WriteLine($"single-token step: direct {Median(step.Direct):F3} ms, relayed {Median(step.Relayed):F3} ms, extra {Median(step.Relayed) - Median(step.Direct):F3} ms");
        Console.WriteLine("per-round extra (relayed - direct) step ms: " + string.Join(", ", step.Relayed.Zip(step.Direct, (r, d) => (r - d).ToString("F3"))));
    }
}
