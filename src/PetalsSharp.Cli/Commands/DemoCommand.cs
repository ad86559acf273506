using System.CommandLine;
using PetalsSharp.Client;
using PetalsSharp.Dht;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Swarm;
using Spectre.Console;

namespace PetalsSharp.Cli.Commands;

/// <summary>
/// <c>petals demo</c>: the whole system on one machine. A DHT bootstrap node, three servers (child processes) that
/// each load a third of the blocks and announce themselves, and a client that finds them through the DHT alone
/// and generates. Everything is on 127.0.0.1 and is shut down at the end.
/// </summary>
public static class DemoCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption(required: false);
        model.Description = "Use this checkpoint folder instead of the built-in random-weight model";
        var prompt = new Option<string>("--prompt", "-p") { Description = "Prompt", DefaultValueFactory = _ => "Once upon a time" };
        var maxNew = new Option<int>("--max-new-tokens", "-n") { Description = "Tokens to generate", DefaultValueFactory = _ => 24 };
        var servers = new Option<int>("--servers") { Description = "Server processes to start", DefaultValueFactory = _ => 3 };
        var cmd = new Command("demo", "Run a local swarm (a DHT node and servers on 127.0.0.1) over a small built-in model and generate through it.\n\nExamples:\n  petals demo\n  petals demo --model ./stories260K --prompt \"Once upon a time\"")
        {
            model, prompt, maxNew, servers,
        };
        cmd.SetAction(async (pr, ct) =>
        {
            var dir = pr.GetValue(model);
            if (dir is null)
            {
                dir = EnsureBuiltInModel();
                AnsiConsole.MarkupLine("[yellow]The built-in demo model has RANDOM weights: expect gibberish. Pass --model DIR for a real checkpoint.[/]");
            }
            else dir = (await ModelSource.ResolveAsync(dir, PetalsSharp.Hub.WeightSelection.All, ct)).Directory;
            return await RunSwarmAsync(Path.GetFullPath(dir), pr.GetValue(prompt)!, pr.GetValue(maxNew), pr.GetValue(servers), ct);
        });
        return cmd;
    }

    static async Task<int> RunSwarmAsync(string dir, string prompt, int maxNew, int serverCount, CancellationToken ct)
    {
        var config = ModelConfigLoader.Load(dir);
        if (serverCount < 1 || serverCount > config.NumLayers) throw new CliException($"--servers must be in [1, {config.NumLayers}]");
        await using var bootstrap = await DhtNode.StartAsync(new DhtNodeOptions { Host = "127.0.0.1", Port = 0 }, ct);
        AnsiConsole.MarkupLine($"DHT bootstrap node: [bold]{bootstrap.PeerAddress}[/]");
        var spans = Enumerable.Range(0, serverCount)
            .Select(i => (config.NumLayers * i / serverCount, config.NumLayers * (i + 1) / serverCount)).ToList();
        var procs = new List<ServerProcess>();
        try
        {
            await AnsiConsole.Status().StartAsync($"starting {serverCount} servers ...", async _ =>
            {
                procs.AddRange(await Task.WhenAll(spans.Select((s, i) => ServerProcess.StartAsync(dir, s.Item1, s.Item2,
                    "--initial-peers", bootstrap.PeerAddress, "--public-name", $"demo-{i}"))));
            });
            var snapshot = await WaitForCoverageAsync(bootstrap, ModelNames.DhtPrefix(ModelNames.FromFolder(dir)), config.NumLayers, serverCount, ct);
            var table = new Table().AddColumns("server", "address", "blocks", "state", "throughput tok/s");
            foreach (var s in snapshot.Servers)
                table.AddRow(Markup.Escape(s.PublicName), s.Address, $"{s.Start}:{s.End}", s.State.ToString().ToUpperInvariant(), $"{s.Throughput:F0}");
            AnsiConsole.Write(table);

            var routes = new List<string>();
            using var lm = await DistributedModel.ConnectViaDhtAsync(dir, [bootstrap.PeerAddress], new RemoteOptions { OnRoute = routes.Add },
                cancellationToken: ct);
            AnsiConsole.MarkupLine($"client found the servers through the DHT alone; {Markup.Escape(routes.LastOrDefault() ?? "")}");
            var started = DateTime.UtcNow;
            int tokens = 0;
            Console.Write(prompt);
            await foreach (var step in lm.StreamAsync([prompt], new GenerationOptions { MaxNewTokens = maxNew }, ct))
            {
                Console.Write(step.TextDeltas[0]);
                tokens++;
            }
            Console.WriteLine();
            var seconds = (DateTime.UtcNow - started).TotalSeconds;
            AnsiConsole.MarkupLine($"[grey]{tokens} tokens in {seconds:F2} s ({tokens / Math.Max(seconds, 1e-9):F1} tok/s), greedy, through {serverCount} servers[/]");
        }
        finally
        {
            await Task.WhenAll(procs.Select(p => p.StopAsync(TimeSpan.FromSeconds(10))));
            foreach (var p in procs) p.Dispose();
            AnsiConsole.MarkupLine("[grey]servers stopped (OFFLINE announced), DHT node stopped[/]");
        }
        return 0;
    }

    static async Task<SwarmSnapshot> WaitForCoverageAsync(DhtNode dht, string prefix, int blocks, int servers, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (true)
        {
            var snapshot = await SwarmReader.ReadAsync(dht, prefix, blocks, ct);
            if (snapshot.Online.Count >= servers && snapshot.Uncovered().Count == 0) return snapshot;
            if (DateTime.UtcNow > deadline) throw new CliException($"servers did not announce themselves within 60 s ({snapshot.Online.Count}/{servers} online)");
            await Task.Delay(200, ct);
        }
    }

    /// <summary>Creates the demo checkpoint once under the user's cache folder and reuses it afterwards.</summary>
    public static string EnsureBuiltInModel()
    {
        var root = Environment.GetEnvironmentVariable("PETALS_CACHE")
                   ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "petals-sharp");
        var dir = Path.Combine(root, "demo-llama-v1");
        if (File.Exists(Path.Combine(dir, "model.safetensors")) && File.Exists(Path.Combine(dir, "tokenizer.json"))) return dir;
        var tmp = dir + ".tmp-" + Environment.ProcessId;
        var config = CreateModelCommand.BuildConfig("llama", hidden: 128, layers: 6, heads: 4, kvHeads: 2, intermediate: 352,
            vocab: 50257, maxPositions: 1024, tie: true);
        AnsiConsole.MarkupLine($"creating the built-in demo model in {Markup.Escape(dir)} ...");
        CreateModelCommand.Write(config, tmp, seed: 7, TorchSharp.torch.ScalarType.Float32, quiet: true);
        try { Directory.Move(tmp, dir); }
        catch (IOException) when (Directory.Exists(dir)) { Directory.Delete(tmp, recursive: true); }
        return dir;
    }
}
