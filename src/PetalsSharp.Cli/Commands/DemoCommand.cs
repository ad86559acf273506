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
        model.Description = $"Use this checkpoint folder instead of the built-in {DemoModel.Name} model";
        var prompt = new Option<string>("--prompt", "-p") { Description = "Prompt", DefaultValueFactory = _ => DemoModel.Prompt };
        var maxNew = new Option<int>("--max-new-tokens", "-n") { Description = "Tokens to generate", DefaultValueFactory = _ => DemoModel.MaxNewTokens };
        var temperature = new Option<double>("--temperature", "-t")
        {
            Description = "0 (the default) picks the most likely token each step; above 0 samples",
            DefaultValueFactory = _ => 0,
        };
        var servers = new Option<int>("--servers") { Description = "Server processes to start", DefaultValueFactory = _ => 3 };
        var cmd = new Command("demo", $"Run a local swarm (a DHT node and servers on 127.0.0.1) over a small built-in model ({DemoModel.Name}, trained on children's stories) and generate through it.\n\nExamples:\n  petals demo\n  petals demo --prompt \"The little dog\" --temperature 0.8\n  petals demo --model ./my-model --prompt \"Hello\"")
        {
            model, prompt, maxNew, temperature, servers,
        };
        cmd.SetAction(async (pr, ct) =>
        {
            var dir = pr.GetValue(model);
            if (dir is null)
            {
                dir = DemoModel.Ensure();
                AnsiConsole.MarkupLine($"built-in model: [bold]{DemoModel.Name}[/] (llama2.c, MIT; license in {Markup.Escape(dir)})");
            }
            else dir = (await ModelSource.ResolveAsync(dir, PetalsSharp.Hub.WeightSelection.All, ct)).Directory;
            var t = pr.GetValue(temperature);
            if (t < 0) throw new CliException("--temperature must not be negative");
            var generation = new GenerationOptions { MaxNewTokens = pr.GetValue(maxNew), DoSample = t > 0, Temperature = t > 0 ? t : 1.0 };
            return await RunSwarmAsync(Path.GetFullPath(dir), pr.GetValue(prompt)!, generation, pr.GetValue(servers), ct);
        });
        return cmd;
    }

    static async Task<int> RunSwarmAsync(string dir, string prompt, GenerationOptions generation, int serverCount, CancellationToken ct)
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
            // The servers hold their blocks in the checkpoint's dtype (their --dtype default); the client's ends match.
            using var lm = await DistributedModel.ConnectViaDhtAsync(dir, [bootstrap.PeerAddress], new RemoteOptions { OnRoute = routes.Add },
                new ModelLoadOptions(config.CheckpointDtype), cancellationToken: ct);
            AnsiConsole.MarkupLine($"client found the servers through the DHT alone; {Markup.Escape(routes.LastOrDefault() ?? "")}");
            var started = DateTime.UtcNow;
            int tokens = 0;
            Console.Write(prompt);
            await foreach (var step in lm.StreamAsync([prompt], generation, ct))
            {
                Console.Write(step.TextDeltas[0]);
                tokens++;
            }
            Console.WriteLine();
            var seconds = (DateTime.UtcNow - started).TotalSeconds;
            AnsiConsole.MarkupLine($"[grey]{tokens} tokens in {seconds:F2} s ({tokens / Math.Max(seconds, 1e-9):F1} tok/s), {(generation.DoSample ? $"sampled at temperature {generation.Temperature}" : "greedy")}, through {serverCount} servers[/]");
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
        var deadline = DateTime.UtcNow.AddSeconds(120);
        while (true)
        {
            var snapshot = await SwarmReader.ReadAsync(dht, prefix, blocks, ct);
            if (snapshot.Online.Count >= servers && snapshot.Uncovered().Count == 0) return snapshot;
            if (DateTime.UtcNow > deadline) throw new CliException($"servers did not announce themselves within 120 s ({snapshot.Online.Count}/{servers} online)");
            await Task.Delay(200, ct);
        }
    }
}
