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

    public static Option<bool> NoTlsOption() => new("--no-tls")
    {
        Description = "Talk to a swarm that runs without TLS (debugging, benchmarks); by default every link is TLS, pinned to node ids",
    };

    public static Option<bool> ShowRouteOption() => new("--show-route")
    {
        Description = "Write 'route: ADDR[start:end] ...' to stderr whenever a route is chosen",
    };

    public static Option<bool> NoPushOption() => new("--no-server-to-server")
    {
        Description = "Drive every hop from the client instead of letting servers push activations to the next server",
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
        string Compression = "none", bool ShowRoute = false, bool NoPush = false, string? Adapter = null, bool RequireExact = false, bool NoTls = false,
        double VerifyRate = 0.05);

    /// <summary>The options every model-running command shares, added to <paramref name="command"/>.</summary>
    public sealed class RemoteOptionSet
    {
        public Option<string> Peers { get; } = PeersOption();
        public Option<string> InitialPeers { get; } = InitialPeersOption();
        public Option<string> SwarmKey { get; } = SwarmKeyOption();
        public Option<string> Compression { get; } = CompressionOption();
        public Option<bool> ShowRoute { get; } = ShowRouteOption();
        public Option<bool> NoPush { get; } = NoPushOption();
        public Option<bool> NoTls { get; } = NoTlsOption();
        public Option<double> VerifyRate { get; } = new("--verify-rate")
        {
            Description = "Share of steps recomputed on a second server of the same blocks to catch wrong activations (0 = off, 1 = every step)",
            DefaultValueFactory = _ => 0.05,
        };
        public Option<string> Adapter { get; } = new("--adapter")
        {
            Description = "Run the blocks with this server-side LoRA adapter (only servers that announce it are used)",
        };
        public Option<bool> RequireExact { get; } = new("--require-exact")
        {
            Description = "Use only servers of the exact weights: never a quantized (int8, nf4) span",
        };

        public void AddTo(Command command)
        {
            foreach (var o in new Option[] { Peers, InitialPeers, SwarmKey, Compression, ShowRoute, NoPush, NoTls, VerifyRate, Adapter, RequireExact }) command.Options.Add(o);
        }

        public Remote Read(System.CommandLine.ParseResult pr) => new(pr.GetValue(Peers), pr.GetValue(InitialPeers), pr.GetValue(SwarmKey),
            pr.GetValue(Compression)!, pr.GetValue(ShowRoute), pr.GetValue(NoPush), pr.GetValue(Adapter), pr.GetValue(RequireExact), pr.GetValue(NoTls),
            pr.GetValue(VerifyRate) is var rate and >= 0 and <= 1 ? rate : throw new CliException($"--verify-rate must be between 0 and 1 (got {pr.GetValue(VerifyRate)})"));
    }

    /// <summary>Opens a model locally or over a swarm; a null <paramref name="dtype"/> holds weights in the checkpoint's own.</summary>
    public static async Task<CausalLM> OpenAsync(string model, ScalarType? dtype, Remote? remote = null, CancellationToken ct = default,
        PetalsSharp.Models.Quant.QuantFormat quant = PetalsSharp.Models.Quant.QuantFormat.None) =>
        (await OpenWithSourceAsync(model, dtype, remote, ct, quant)).Model;

    /// <summary>Like <see cref="OpenAsync"/>, also giving the folder the model was loaded from (a hub snapshot for a hub id).</summary>
    /// <remarks>
    /// <paramref name="quant"/> packs what runs here: every block and the ends of a local model, the client's
    /// embeddings and head when servers run the blocks.
    /// </remarks>
    public static async Task<(CausalLM Model, ModelSource.Resolved Source)> OpenWithSourceAsync(string model, ScalarType? requestedDtype,
        Remote? remote = null, CancellationToken ct = default, PetalsSharp.Models.Quant.QuantFormat quant = PetalsSharp.Models.Quant.QuantFormat.None)
    {
        remote ??= new Remote();
        bool viaPeers = !string.IsNullOrWhiteSpace(remote.Peers), viaDht = !string.IsNullOrWhiteSpace(remote.InitialPeers);
        if (viaPeers && viaDht) throw new CliException("give --peers (fixed servers) or --initial-peers (find them in the DHT), not both");
        // A hub model is fetched here: all of it to run locally, only the client's ends when servers run the blocks.
        var source = await ModelSource.ResolveAsync(model, viaPeers || viaDht ? Hub.WeightSelection.ClientEnds : Hub.WeightSelection.All, ct);
        string modelDir = source.Directory;
        var dtype = Cli.ResolveDtype(requestedDtype, modelDir);
        if (!viaPeers && !viaDht)
        {
            if (!string.IsNullOrEmpty(remote.Adapter))
                throw new CliException("--adapter names a server-side adapter: give --peers or --initial-peers too");
            return (CausalLM.Load(modelDir, new ModelLoadOptions(dtype, Quant: quant, EndsQuant: quant)), source);
        }
        if (remote.Adapter is { } adapter) PetalsSharp.Models.Lora.LoraNames.Check(adapter);
        var options = new RemoteOptions
        {
            Compression = ParseCompression(remote.Compression),
            SwarmKey = Cli.LoadSwarmKey(remote.SwarmKeyPath),
            OnRoute = remote.ShowRoute ? line => Console.Error.WriteLine(line) : null,
            UseServerToServer = !remote.NoPush,
            ActiveAdapter = remote.Adapter,
            RequireExact = remote.RequireExact,
            Tls = !remote.NoTls,
            VerifyRate = remote.VerifyRate,
        };
        var lm = viaPeers
            ? await DistributedModel.ConnectAsync(modelDir, Cli.SplitList(remote.Peers), options, new ModelLoadOptions(dtype, EndsQuant: quant), ct)
            : await DistributedModel.ConnectViaDhtAsync(modelDir, Cli.SplitList(remote.InitialPeers), options, new ModelLoadOptions(dtype, EndsQuant: quant),
                source.SwarmName is null ? null : Swarm.ModelNames.DhtPrefix(source.SwarmName), ct);
        return (lm, source);
    }
}
