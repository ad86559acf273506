using System.Diagnostics;
using PetalsSharp.Client;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Testing;

namespace PetalsSharp.Benchmarks;

/// <summary>
/// Issue 21's benchmark on the WAN setup of P4: 3 server processes, each behind a <see cref="LinkShaper"/> adding a
/// one-way delay (50 ms) to every link, push on. Greedy tok/s of plain decoding against speculative decoding with a
/// draft that is always right (the model itself) at fixed k = 1, 2, 4, 8 and adaptive, and with prompt lookup on a
/// repetitive text; runs interleave round by round. The model defaults to stories260K (its compute is negligible
/// next to the links, so the ratio shows what fewer round trips buy).
/// </summary>
public static class SpeculativeBenchmark
{
    const string Story = "Once upon a time";
    const string Repetitive = "Lily and Tom went to the park. Lily and Tom went to the park. Lily and Tom went to the park.";

    public static async Task RunAsync(BenchArgs args)
    {
        var dir = args.Get("model") ?? DemoModelDir();
        double delayMs = args.Int("delay-ms", 50);
        int servers = args.Int("servers", 3), tokens = args.Int("new", 32), rounds = args.Int("rounds", 3);
        var config = ModelConfigLoader.Load(dir);
        var spans = Enumerable.Range(0, servers).Select(i => (config.NumLayers * i / servers, config.NumLayers * (i + 1) / servers)).ToList();
        var procs = await Task.WhenAll(spans.Select(s => ServerProcess.StartAsync(dir, s.Item1, s.Item2, "--push-peers", "127.0.0.1")));
        var shapers = await Task.WhenAll(procs.Select(p => LinkShaper.StartAsync(p.Address, TimeSpan.FromMilliseconds(delayMs))));
        try
        {
            using var lm = await DistributedModel.ConnectAsync(dir, shapers.Select(s => s.Address), new RemoteOptions { UseServerToServer = true });
            using var draftLm = CausalLM.Load(dir);
            Console.WriteLine($"model {dir}; {servers} servers, {delayMs} ms one-way on every link, push on; {tokens} greedy tokens per run, {rounds} rounds");
            var runs = new (string Name, string Prompt, Func<IDraftSource?> Draft, int K, bool Adaptive)[]
            {
                ("plain", Story, () => null, 0, false),
                ("self-draft k=1", Story, () => new DraftModel(draftLm), 1, false),
                ("self-draft k=2", Story, () => new DraftModel(draftLm), 2, false),
                ("self-draft k=4", Story, () => new DraftModel(draftLm), 4, false),
                ("self-draft k=8", Story, () => new DraftModel(draftLm), 8, false),
                ("self-draft adaptive from 4", Story, () => new DraftModel(draftLm), 4, true),
                ("plain, repetitive prompt", Repetitive, () => null, 0, false),
                ("prompt lookup adaptive from 4, repetitive prompt", Repetitive, () => new PromptLookupDraft(), 4, true),
            };
            await RunOnceAsync(lm, Story, null, 4, false, tokens);   // warm-up: JIT and page faults on every server
            var results = runs.ToDictionary(r => r.Name, _ => new List<(double TokS, SpeculationStats? Stats)>());
            for (int round = 0; round < rounds; round++)
                foreach (var r in round % 2 == 0 ? runs : runs.Reverse())
                {
                    await using var draft = r.Draft();
                    results[r.Name].Add(await RunOnceAsync(lm, r.Prompt, draft, r.K, r.Adaptive, tokens));
                }

            double Median(string name) => results[name].Select(x => x.TokS).Order().ElementAt(rounds / 2);
            Console.WriteLine();
            Console.WriteLine("| run | tok/s per round | median | ÷ plain | steps | acceptance |");
            Console.WriteLine("|---|---|---|---|---|---|");
            foreach (var r in runs)
            {
                var list = results[r.Name];
                var plain = r.Prompt == Story ? "plain" : "plain, repetitive prompt";
                var stats = list[^1].Stats;
                Console.WriteLine($"| {r.Name} | {string.Join(", ", list.Select(x => x.TokS.ToString("F1")))} | {Median(r.Name):F1} | " +
                                  $"{Median(r.Name) / Median(plain):F2} | {stats?.Steps.ToString() ?? "–"} | {(stats is null ? "–" : stats.AcceptanceRate.ToString("P0"))} |");
            }
        }
        finally
        {
            foreach (var s in shapers) await s.DisposeAsync();
            foreach (var p in procs) p.Dispose();
        }
    }

    static async Task<(double TokS, SpeculationStats? Stats)> RunOnceAsync(CausalLM lm, string prompt, IDraftSource? draft, int k, bool adaptive, int tokens)
    {
        var options = new GenerationOptions
        {
            MaxNewTokens = tokens, IgnoreEos = true,
            Speculative = draft is null ? null : new SpeculativeOptions(draft, k, MaxDraftTokens: 8, Adaptive: adaptive),
        };
        var sw = Stopwatch.StartNew();
        var result = await lm.GenerateAsync([prompt], options);
        return (result.NewTokens[0].Count / sw.Elapsed.TotalSeconds, result.Speculation);
    }

    static string DemoModelDir() =>
        RepoFiles.Find(Path.Combine("src", "PetalsSharp.Cli", "DemoModel", "stories260K"), "config.json", "give --model DIR");
}
