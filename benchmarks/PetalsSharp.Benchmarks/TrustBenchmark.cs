using PetalsSharp.Client;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Server;

namespace PetalsSharp.Benchmarks;

/// <summary>
/// What trust costs, on the swarm benchmark's shape (the ~100M model, 3 spans on loopback, 64-token prompt, 128 new
/// tokens, f32): P1 (swarm ÷ local tok/s) over TLS and over plain text, so the per-hop cost of TLS; and tok/s with
/// activation checks at the default rate (0.05) and at 0, over a swarm where every span has a second server.
/// Configurations alternate round by round; ratios are per round.
/// </summary>
public static class TrustBenchmark
{
    public static async Task RunAsync(BenchArgs args)
    {
        var dir = args.Get("model") ?? EngineBenchmark.EnsureModel();
        int promptLen = args.Int("prompt", 64), newTokens = args.Int("new", 128), servers = args.Int("servers", 3), rounds = args.Int("rounds", 5);
        double rate = double.Parse(args.Get("verify-rate") ?? "0.05", System.Globalization.CultureInfo.InvariantCulture);
        var config = ModelConfigLoader.Load(dir);
        var prompt = Enumerable.Range(0, promptLen).Select(i => (i * 7919) % (config.VocabSize - 1)).ToArray();
        var options = new GenerationOptions { MaxNewTokens = newTokens, IgnoreEos = true };
        var spans = Enumerable.Range(0, servers).Select(i => (config.NumLayers * i / servers, config.NumLayers * (i + 1) / servers)).ToList();
        Task<ServerProcess[]> Start(params string[] extra) =>
            Task.WhenAll(spans.Select(s => ServerProcess.StartAsync(dir, s.Item1, s.Item2, ["--push-peers", "127.0.0.1", .. extra])));
        var tls = await Start();
        var replicas = await Start();
        var plain = await Start("--no-tls");
        try
        {
            using var local = CausalLM.Load(dir);
            using var overTls = await DistributedModel.ConnectAsync(dir, tls.Select(p => p.Address), new RemoteOptions { VerifyRate = 0 });
            using var overPlain = await DistributedModel.ConnectAsync(dir, plain.Select(p => p.Address), new RemoteOptions { VerifyRate = 0, Tls = false });
            var both = tls.Concat(replicas).Select(p => p.Address).ToList();
            using var replicatedLm = await DistributedModel.ConnectAsync(dir, both, new RemoteOptions { VerifyRate = 0 });
            using var checkedLm = await DistributedModel.ConnectAsync(dir, both, new RemoteOptions { VerifyRate = rate, VerifySeed = 1 });
            var all = new (string Name, CausalLM Lm)[] { ("local", local), ("tls", overTls), ("plain", overPlain), ("replicated", replicatedLm), ("checked", checkedLm) };
            foreach (var (_, lm) in all) SwarmBenchmark.Generate(lm, prompt, options);   // warm-up: JIT in fresh processes
            Console.WriteLine($"model {dir}; prompt {promptLen}, new {newTokens}, f32, {servers} spans on loopback, push on; checks at rate {rate} over 2 servers per span");
            Console.WriteLine("| round | local tok/s | TLS tok/s | plain tok/s | P1 TLS | P1 plain | TLS cost per hop per step | 2 per span, rate 0 tok/s | rate " + rate + " tok/s | checked ÷ unchecked |");
            Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|");
            var p1Tls = new List<double>();
            var p1Plain = new List<double>();
            var tlsHop = new List<double>();
            var checkRatio = new List<double>();
            for (int r = 1; r <= rounds; r++)
            {
                var m = all.ToDictionary(x => x.Name, x => SwarmBenchmark.Measure(x.Lm, prompt, options));
                p1Tls.Add(m["local"].Total / m["tls"].Total);
                p1Plain.Add(m["local"].Total / m["plain"].Total);
                tlsHop.Add((m["tls"].Step - m["plain"].Step) * 1000 / servers);
                checkRatio.Add(m["replicated"].Total / m["checked"].Total);
                string Tok(string n) => (newTokens / m[n].Total).ToString("F1");
                Console.WriteLine($"| {r} | {Tok("local")} | {Tok("tls")} | {Tok("plain")} | {p1Tls[^1]:F3} | {p1Plain[^1]:F3} | {tlsHop[^1]:F3} ms | " +
                                  $"{Tok("replicated")} | {Tok("checked")} | {checkRatio[^1]:F3} |");
            }
            var stats = ((RemoteSequential)checkedLm.Blocks).Verification;
            Console.WriteLine($"P1 over TLS: median {SwarmBenchmark.Median(p1Tls):F3}; over plain text: median {SwarmBenchmark.Median(p1Plain):F3}; TLS per hop per step: median {SwarmBenchmark.Median(tlsHop):F3} ms");
            Console.WriteLine($"tok/s with checks at {rate} ÷ without: median {SwarmBenchmark.Median(checkRatio):F3} (min {checkRatio.Min():F3}); checks made: {stats}");
        }
        finally
        {
            foreach (var p in tls.Concat(replicas).Concat(plain)) p.Dispose();
        }
    }
}
