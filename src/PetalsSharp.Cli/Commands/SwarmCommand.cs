using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using PetalsSharp.Swarm;
using Spectre.Console;

namespace PetalsSharp.Cli.Commands;

/// <summary><c>petals swarm</c>: the models in a swarm, the coverage of each block, and the servers.</summary>
public static class SwarmCommand
{
    public static Command Create()
    {
        var initialPeers = ModelOpener.InitialPeersOption();
        initialPeers.Required = true;
        var swarmKey = ModelOpener.SwarmKeyOption();
        var json = new Option<bool>("--json") { Description = "Print JSON instead of tables" };
        var cmd = new Command("swarm", "Show the models of a swarm, per-block coverage and the servers.\n\nExample:\n  petals swarm --initial-peers 127.0.0.1:31337")
        {
            initialPeers, swarmKey, json,
        };
        cmd.SetAction(async (pr, ct) =>
        {
            await using var dht = await SwarmReader.JoinAsClientAsync(Cli.SplitList(pr.GetValue(initialPeers)),
                Cli.LoadSwarmKey(pr.GetValue(swarmKey)), ct);
            var models = await SwarmReader.ReadModelsAsync(dht, ct);
            var snapshots = new List<SwarmSnapshot>();
            foreach (var m in models) snapshots.Add(await SwarmReader.ReadAsync(dht, m.DhtPrefix, m.NumBlocks, ct));
            if (pr.GetValue(json)) Console.WriteLine(ToJson(snapshots).ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            else Render(snapshots);
            return 0;
        });
        return cmd;
    }

    public static JsonObject ToJson(IEnumerable<SwarmSnapshot> snapshots) => new()
    {
        ["models"] = new JsonArray(snapshots.Select(s => (JsonNode)new JsonObject
        {
            ["dht_prefix"] = s.DhtPrefix,
            ["num_blocks"] = s.NumBlocks,
            ["coverage"] = new JsonArray(s.Coverage().Select(c => (JsonNode)new JsonObject { ["servers"] = c.Servers, ["throughput"] = c.Throughput }).ToArray()),
            ["uncovered_blocks"] = new JsonArray(s.Uncovered().Select(i => (JsonNode)i).ToArray()),
            ["servers"] = new JsonArray(s.Servers.Select(v => (JsonNode)new JsonObject
            {
                ["peer_id"] = v.PeerId, ["address"] = v.Address, ["start"] = v.Start, ["end"] = v.End,
                ["state"] = v.State.ToString().ToUpperInvariant(), ["throughput"] = v.Throughput,
                ["inference_rps"] = v.InferenceRps, ["cache_tokens_left"] = v.CacheTokensLeft,
                ["public_name"] = v.PublicName, ["dtype"] = v.WeightsDtype, ["version"] = v.Version,
                ["expires"] = v.Expiration.ToString("O"),
            }).ToArray()),
        }).ToArray()),
    };

    static void Render(IReadOnlyList<SwarmSnapshot> snapshots)
    {
        if (snapshots.Count == 0) AnsiConsole.MarkupLine("[yellow]no models announced in this swarm[/]");
        foreach (var s in snapshots)
        {
            AnsiConsole.MarkupLine($"[bold]{Markup.Escape(s.DhtPrefix)}[/] ({s.NumBlocks} blocks)");
            var coverage = s.Coverage();
            AnsiConsole.MarkupLine("coverage: " + string.Join(" ", coverage.Select(c => c.Servers == 0 ? "[red]0[/]" : $"[green]{c.Servers}[/]")));
            var table = new Table().AddColumns("state", "address", "span", "throughput tok/s", "cache tokens", "name", "peer id");
            foreach (var v in s.Servers)
                table.AddRow(v.State.ToString().ToUpperInvariant(), Markup.Escape(v.Address), $"{v.Start}:{v.End}", $"{v.Throughput:F0}",
                    v.CacheTokensLeft.ToString(), Markup.Escape(v.PublicName), v.PeerId[..Math.Min(12, v.PeerId.Length)]);
            AnsiConsole.Write(table);
        }
    }
}
