using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using PetalsSharp.Client;
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
        var noTls = ModelOpener.NoTlsOption();
        var cmd = new Command("swarm", "Show the models of a swarm, per-block coverage and the servers.\n\nExample:\n  petals swarm --initial-peers 127.0.0.1:31337")
        {
            initialPeers, swarmKey, json, noTls,
        };
        cmd.SetAction(async (pr, ct) =>
        {
            await using var dht = await SwarmReader.JoinAsClientAsync(Cli.SplitList(pr.GetValue(initialPeers)),
                Cli.LoadSwarmKey(pr.GetValue(swarmKey)), ct, tls: !pr.GetValue(noTls));
            var models = await SwarmReader.ReadModelsAsync(dht, ct);
            var snapshots = new List<SwarmSnapshot>();
            foreach (var m in models) snapshots.Add(await SwarmReader.ReadAsync(dht, m.DhtPrefix, m.NumBlocks, ct));
            // Records are claims anyone can sign: coverage counts only servers that answered Info as announced.
            var probeTimeout = new RemoteOptions().ProbeTimeout;
            var verified = await Task.WhenAll(snapshots.Select(s => SwarmVerifier.VerifyAsync(s, Cli.LoadSwarmKey(pr.GetValue(swarmKey)), probeTimeout, ct, !pr.GetValue(noTls))));
            if (pr.GetValue(json)) Console.WriteLine(ToJson(snapshots, verified).ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            else Render(snapshots, verified);
            return 0;
        });
        return cmd;
    }

    /// <summary>
    /// The swarm as JSON. <c>coverage</c> and <c>uncovered_blocks</c> count only <paramref name="verified"/> servers
    /// (one per address); <c>announced_servers</c> counts every ONLINE record, and each server says whether it was
    /// verified.
    /// </summary>
    public static JsonObject ToJson(IReadOnlyList<SwarmSnapshot> snapshots, IReadOnlyList<IReadOnlySet<ServerInfo>> verified) => new()
    {
        ["models"] = new JsonArray(snapshots.Select((s, k) => (JsonNode)new JsonObject
        {
            ["dht_prefix"] = s.DhtPrefix,
            ["num_blocks"] = s.NumBlocks,
            ["coverage"] = new JsonArray(SwarmVerifier.Verified(s, verified[k]).Coverage().Zip(s.Coverage()).Select(c => (JsonNode)new JsonObject
            {
                ["servers"] = c.First.Servers, ["throughput"] = c.First.Throughput, ["announced_servers"] = c.Second.Servers,
            }).ToArray()),
            ["uncovered_blocks"] = new JsonArray(SwarmVerifier.Verified(s, verified[k]).Uncovered().Select(i => (JsonNode)i).ToArray()),
            ["servers"] = new JsonArray(s.Servers.Select(v => (JsonNode)new JsonObject
            {
                ["verified"] = verified[k].Contains(v),
                ["peer_id"] = v.PeerId, ["address"] = v.Address, ["start"] = v.Start, ["end"] = v.End,
                ["state"] = v.State.ToString().ToUpperInvariant(), ["throughput"] = v.Throughput,
                ["inference_rps"] = v.InferenceRps, ["cache_tokens_left"] = v.CacheTokensLeft,
                ["public_name"] = v.PublicName, ["dtype"] = v.WeightsDtype, ["quant"] = v.Quant, ["version"] = v.Version,
                ["reachability"] = v.Reachability, ["relay"] = v.Relay,
                ["expires"] = v.Expiration.ToString("O"),
            }).ToArray()),
        }).ToArray()),
    };

    static void Render(IReadOnlyList<SwarmSnapshot> snapshots, IReadOnlyList<IReadOnlySet<ServerInfo>> verified)
    {
        if (snapshots.Count == 0) AnsiConsole.MarkupLine("[yellow]no models announced in this swarm[/]");
        foreach (var (s, k) in snapshots.Select((s, k) => (s, k)))
        {
            AnsiConsole.MarkupLine($"[bold]{Markup.Escape(s.DhtPrefix)}[/] ({s.NumBlocks} blocks)");
            var coverage = SwarmVerifier.Verified(s, verified[k]).Coverage();
            AnsiConsole.MarkupLine("coverage: " + string.Join(" ", coverage.Select(c => c.Servers == 0 ? "[red]0[/]" : $"[green]{c.Servers}[/]"))
                + " (servers that answered)");
            var unverified = s.Online.Count(v => !verified[k].Contains(v));
            if (unverified > 0) AnsiConsole.MarkupLine($"[yellow]{unverified} ONLINE record(s) did not answer as announced[/]");
            var table = new Table().AddColumns("state", "verified", "address", "reached", "span", "weights", "throughput tok/s", "cache tokens", "name", "peer id");
            foreach (var v in s.Servers)
                table.AddRow(v.State.ToString().ToUpperInvariant(), verified[k].Contains(v) ? "yes" : "[red]no[/]", Markup.Escape(v.Address),
                    v.IsRelayed ? $"[yellow]via relay[/] {Markup.Escape(v.Relay[..Math.Min(v.Relay.Length, v.Relay.LastIndexOf('/') is > 0 and var cut ? cut : v.Relay.Length)])}" : "direct",
                    $"{v.Start}:{v.End}", Markup.Escape(v.IsExact ? v.WeightsDtype : v.Quant), $"{v.Throughput:F0}",
                    v.CacheTokensLeft.ToString(), Markup.Escape(v.PublicName), v.PeerId[..Math.Min(12, v.PeerId.Length)]);
            AnsiConsole.Write(table);
        }
    }
}
