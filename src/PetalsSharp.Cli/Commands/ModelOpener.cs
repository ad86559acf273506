using System.CommandLine;
using PetalsSharp.Client;
using PetalsSharp.Models;
using PetalsSharp.Wire.V1;
using static TorchSharp.torch;

namespace PetalsSharp.Cli.Commands;

/// <summary>
/// Opens the model a command names: all blocks locally, or, with <c>--peers</c>, only the client-side parts
/// with the blocks on those servers.
/// </summary>
public static class ModelOpener
{
    public static Option<string> PeersOption() => new("--peers")
    {
        Description = "Comma-separated HOST:PORT of servers that together cover every block (runs the blocks remotely)",
    };

    public static Option<string> InitialPeersOption() => new("--initial-peers")
    {
        Description = "DHT nodes to find the servers through: ADDR[,ADDR], ADDR = HOST:PORT or HOST:PORT/ID",
    };

    public static Option<string> SwarmKeyOption() => new("--swarm-key")
    {
        Description = "Private swarm secret file",
    };

    public static Option<bool> ShowRouteOption() => new("--show-route")
    {
        Description = "Write 'route: ADDR[start:end] ...' to stderr whenever a route is chosen",
    };

    public static Option<string> CompressionOption() => new("--compression")
    {
        Description = "Activation compression on the wire: none (default), f16, bf16, int8",
        DefaultValueFactory = _ => "none",
    };

    public static Compression ParseCompression(string value) => value.ToLowerInvariant() switch
    {
        "none" => Compression.None,
        "f16" or "float16" or "fp16" => Compression.Float16,
        "bf16" or "bfloat16" => Compression.Bfloat16,
        "int8" or "int8-blockwise" => Compression.Int8Blockwise,
        _ => throw new CliException($"--compression must be none, f16, bf16 or int8 (got '{value}')"),
    };

    /// <summary>Where the blocks run: locally (no peers), on listed servers, or on servers found in the DHT.</summary>
    public sealed record Remote(string? Peers = null, string? InitialPeers = null, string? SwarmKeyPath = null,
        string Compression = "none", bool ShowRoute = false);

    public static Remote ReadRemote(System.CommandLine.ParseResult pr, Option<string> peers, Option<string> initialPeers,
        Option<string> swarmKey, Option<string> compression, Option<bool>? showRoute = null) =>
        new(pr.GetValue(peers), pr.GetValue(initialPeers), pr.GetValue(swarmKey), pr.GetValue(compression)!,
            showRoute is not null && pr.GetValue(showRoute));

    public static async Task<CausalLM> OpenAsync(string modelDir, ScalarType dtype, Remote? remote = null, CancellationToken ct = default)
    {
        if (!Directory.Exists(modelDir)) throw new CliException($"model folder not found: {modelDir}");
        remote ??= new Remote();
        bool viaPeers = !string.IsNullOrWhiteSpace(remote.Peers), viaDht = !string.IsNullOrWhiteSpace(remote.InitialPeers);
        if (viaPeers && viaDht) throw new CliException("give --peers (fixed servers) or --initial-peers (find them in the DHT), not both");
        if (!viaPeers && !viaDht) return CausalLM.Load(modelDir, new ModelLoadOptions(dtype));
        var options = new RemoteOptions
        {
            Compression = ParseCompression(remote.Compression),
            SwarmKey = Cli.LoadSwarmKey(remote.SwarmKeyPath),
            OnRoute = remote.ShowRoute ? line => Console.Error.WriteLine(line) : null,
        };
        return viaPeers
            ? await DistributedModel.ConnectAsync(modelDir, Cli.SplitList(remote.Peers), options, new ModelLoadOptions(dtype), ct)
            : await DistributedModel.ConnectViaDhtAsync(modelDir, Cli.SplitList(remote.InitialPeers), options, new ModelLoadOptions(dtype), cancellationToken: ct);
    }
}
