using System.CommandLine;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using PetalsSharp.Server;
using Spectre.Console;

namespace PetalsSharp.Cli.Commands;

/// <summary><c>petals server</c>: serve a span of a model's blocks over gRPC until SIGINT/SIGTERM.</summary>
public static class ServerCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption();
        var blocks = new Option<string?>("--blocks") { Description = "Fixed span to serve, START:END (END exclusive), e.g. 0:12; never moves" };
        var numBlocks = new Option<int?>("--num-blocks") { Description = "Serve N blocks where the swarm is weakest (chosen after joining) and move when rebalancing pays off" };
        var memoryBudget = new Option<long?>("--memory-budget") { Description = "Without --blocks/--num-blocks: bytes for weights + KV cache that set N (default half the available RAM)" };
        var placementDelay = new Option<double>("--placement-delay") { Description = "Wait a random 0..SECONDS before choosing blocks, so servers started together spread out", DefaultValueFactory = _ => 2 };
        var rebalancePeriod = new Option<double>("--rebalance-period") { Description = "Seconds between balance checks of an auto-placed server (±50% jitter; 0 = never move)", DefaultValueFactory = _ => 120 };
        var balanceThreshold = new Option<double>("--balance-threshold") { Description = "Move only if the swarm's bottleneck would rise by more than this fraction (0.25 = 25%; Petals' balance_quality = 1/(1+T))", DefaultValueFactory = _ => 0.25 };
        var throughput = new Option<string>("--throughput") { Description = "auto (measure once, cached in $PETALS_CACHE or ~/.cache/petals-sharp/throughput.json), eval (measure again) or a number (tokens/s) to announce", DefaultValueFactory = _ => "auto" };
        var host = new Option<string>("--host") { Description = "Interface to bind", DefaultValueFactory = _ => "0.0.0.0" };
        var port = new Option<int>("--port") { Description = "Port to bind (0 = any free port)", DefaultValueFactory = _ => ServerOptions.DefaultPort };
        var publicAddress = new Option<string?>("--public-address") { Description = "Address announced to clients (default: the bound host:port)" };
        var dtype = Cli.DtypeOption();
        var quant = Cli.QuantOption("the served blocks' linears (Mixtral's router stays exact)");
        var cacheTokens = new Option<long?>("--cache-tokens") { Description = $"KV-cache room in tokens of one row across the span (default {ServerOptions.DefaultCacheTokens})" };
        var cacheBytes = new Option<long?>("--cache-bytes") { Description = "KV-cache room in bytes (instead of --cache-tokens)" };
        var overcommit = new Option<double>("--cache-overcommit") { Description = "Admit sessions whose max_length promises add up to this multiple of the cache (≥ 1; memory is taken only as sessions grow); above 1 a step may find the cache full and be answered busy", DefaultValueFactory = _ => 1 };
        var kvDtype = new Option<string?>("--kv-dtype") { Description = "How the KV cache stores keys and values: f32, bf16 or f16 (default: the weights' dtype, so an f32 model stays exact); attention computes in f32" };
        var maxSession = new Option<int?>("--max-session-length") { Description = "Largest max_length a session may ask for (default min(max_position_embeddings, 8192))" };
        var idle = new Option<double>("--session-idle-timeout") { Description = "Seconds without a step that runs tokens before a session is closed and its cache freed (steps without tokens do not count)", DefaultValueFactory = _ => 300 };
        var cacheShare = new Option<double>("--max-cache-share") { Description = "Fraction of the KV cache the sessions of one client IP address (IPv6: its /64) may hold together, in (0, 1]; 1 = no cap", DefaultValueFactory = _ => 0.5 };
        var requestMemory = new Option<long?>("--max-request-memory") { Description = "Bytes all Forward/Backward calls together may hold in received tensors (default 2 GiB); a call past it gets RESOURCE_EXHAUSTED" };
        var prefillChunk = new Option<int>("--prefill-chunk") { Description = "Rows (batch × tokens) per compute task of a long prefill: steps of other sessions run between chunks", DefaultValueFactory = _ => 128 };
        var requestTokens = new Option<int>("--max-request-tokens") { Description = "Largest batch × tokens of one Forward/Backward call; also sets the largest tensor such a call may send (tokens × hidden size × 4 B)", DefaultValueFactory = _ => 16384 };
        var readTimeout = new Option<double>("--request-read-timeout") { Description = "Seconds a Forward/Backward call may go without sending a message while it sends its tensors (at most 86400)", DefaultValueFactory = _ => 120 };
        var initialPeers = new Option<string?>("--initial-peers") { Description = "Join the swarm through these DHT nodes: ADDR[,ADDR], ADDR = HOST:PORT or HOST:PORT/ID" };
        var pushPeers = new Option<string?>("--push-peers") { Description = "Servers this one may push step outputs to besides those the DHT announces: HOST:PORT or HOST (any port), comma-separated; needed for push without a DHT" };
        var joinTimeout = new Option<double>("--join-timeout") { Description = "Seconds to keep retrying initial peers that cannot be reached before giving up (0 = one try)", DefaultValueFactory = _ => 60 };
        var newSwarm = new Option<bool>("--new-swarm") { Description = "Start a new swarm (this server is its first DHT node)" };
        var identity = new Option<string?>("--identity") { Description = "Key pair file (created on first use): a restarted server keeps its node id" };
        var swarmKey = new Option<string?>("--swarm-key") { Description = "Private swarm secret file: only nodes with the same key can join, store or be served" };
        var updatePeriod = new Option<double>("--update-period") { Description = "Seconds between announcements (records expire after twice this)", DefaultValueFactory = _ => 60 };
        var publicName = new Option<string?>("--public-name") { Description = "Name shown in swarm tables" };
        var metricsPort = new Option<int?>("--metrics-port") { Description = "Serve Prometheus metrics at http://HOST:PORT/metrics (HTTP/1.1; 0 = any free port, printed at start)" };
        var adapters = new Option<string?>("--adapters") { Description = "PEFT LoRA adapters to serve: DIR, NAME=DIR or a hub repo ORG/NAME[@REV], comma-separated (a folder is named after itself, a hub adapter after its repo id); requests pick one by name" };
        var noTls = new Option<bool>("--no-tls") { Description = "Serve and dial without TLS (debugging, benchmarks); clients and peers must use --no-tls too" };
        var reachability = new Option<string>("--reachability")
        {
            Description = "auto: ask DHT peers to dial this server at start and use a relay if none can; direct: announce the address unchecked; relay: open no inbound port (a Unix socket) and be reached through a relay",
            DefaultValueFactory = _ => "auto",
        };
        var relayPeers = new Option<string?>("--relay-peers") { Description = "In relay mode, relays to try before those the DHT lists: HOST:PORT[/ID], comma-separated" };
        var relay = new RelayOptionSet();
        var dhtPrefix = new Option<string?>("--dht-prefix") { Description = "DHT key prefix (default: the model folder's name, '.' and ' ' as '-')" };
        var cmd = new Command("server", "Serve a span of a model's transformer blocks over gRPC.\n\nExamples:\n  petals server -m ./my-model --blocks 0:12 --port 31330 --new-swarm\n  petals server -m ./my-model --blocks 12:24 --port 31331 --initial-peers 10.0.0.5:31330\n  petals server -m ./my-model --num-blocks 8 --initial-peers 10.0.0.5:31330\n  petals server -m ./my-model --num-blocks 8 --initial-peers 10.0.0.5:31330 --reachability relay   # behind NAT")
        {
            model, blocks, numBlocks, memoryBudget, placementDelay, rebalancePeriod, balanceThreshold, throughput, host, port, publicAddress, dtype, quant, cacheTokens, cacheBytes, kvDtype, overcommit, maxSession, idle, cacheShare, readTimeout, requestMemory, requestTokens, prefillChunk,
            initialPeers, pushPeers, joinTimeout, newSwarm, identity, swarmKey, updatePeriod, publicName, dhtPrefix, metricsPort, adapters, noTls,
            reachability, relayPeers,
        };
        relay.AddTo(cmd);
        cmd.SetAction(async (pr, ct) =>
        {
            var blocksText = pr.GetValue(blocks);
            if (blocksText is not null && (pr.GetValue(numBlocks) is not null || pr.GetValue(memoryBudget) is not null))
                throw new CliException("give --blocks (a fixed span) or --num-blocks/--memory-budget (chosen by the swarm), not both");
            var (start, end) = blocksText is null ? (0, 0) : ParseBlocks(blocksText);
            if (pr.GetValue(numBlocks) is < 1) throw new CliException($"--num-blocks must be at least 1 (got {pr.GetValue(numBlocks)})");
            if (pr.GetValue(memoryBudget) is < 1) throw new CliException("--memory-budget must be a positive number of bytes");
            double delay = pr.GetValue(placementDelay), period = pr.GetValue(rebalancePeriod), threshold = pr.GetValue(balanceThreshold);
            if (!(delay >= 0 && delay < 3600)) throw new CliException($"--placement-delay must be in [0, 3600) seconds (got {delay})");
            if (!(period >= 0 && period < 1e6)) throw new CliException($"--rebalance-period must be ≥ 0 seconds (got {period})");
            if (!(threshold >= 0 && double.IsFinite(threshold))) throw new CliException($"--balance-threshold must be ≥ 0 (got {threshold})");
            var (fixedThroughput, remeasure) = ParseThroughput(pr.GetValue(throughput)!);
            if (pr.GetValue(cacheTokens) is not null && pr.GetValue(cacheBytes) is not null)
                throw new CliException("give --cache-tokens or --cache-bytes, not both");
            double idleSeconds = pr.GetValue(idle);
            if (!(idleSeconds > 0) || idleSeconds > TimeSpan.MaxValue.TotalSeconds / 2)
                throw new CliException($"--session-idle-timeout must be a positive number of seconds (got {idleSeconds})");
            double over = pr.GetValue(overcommit);
            if (!(over >= 1 && over <= 100)) throw new CliException($"--cache-overcommit must be in [1, 100] (got {over})");
            double share = pr.GetValue(cacheShare);
            if (!(share > 0 && share <= 1)) throw new CliException($"--max-cache-share must be in (0, 1] (got {share})");
            double readSeconds = pr.GetValue(readTimeout);
            if (!(readSeconds > 0) || readSeconds > 86400)
                throw new CliException($"--request-read-timeout must be a positive number of seconds up to 86400 (got {readSeconds})");
            var requestedDtype = Cli.ParseDtypeOrDefault(pr.GetValue(dtype));
            var requestedKvDtype = pr.GetValue(kvDtype) is { } kv ? Cli.ParseDtype(kv, "--kv-dtype") : (TorchSharp.torch.ScalarType?)null;
            var format = Cli.ParseQuant(pr.GetValue(quant));
            // A fixed span downloads only its blocks' shards; a swarm-chosen span fetches its own once the swarm has
            // chosen it (a single-file checkpoint is one file either way).
            var modelArg = pr.GetValue(model)!;
            var source = await ModelSource.ResolveAsync(modelArg,
                blocksText is null ? PetalsSharp.Hub.WeightSelection.None : PetalsSharp.Hub.WeightSelection.Blocks(start, end), ct);
            Func<int, int, CancellationToken, Task>? fetchBlocks = null;
            if (blocksText is null && source.SwarmName is not null)
            {
                if (File.Exists(Path.Combine(source.Directory, PetalsSharp.Models.Weights.WeightStore.IndexFileName)))
                    fetchBlocks = (s, e, token) => ModelSource.ResolveAsync(modelArg, PetalsSharp.Hub.WeightSelection.Blocks(s, e), token);
                else
                    source = await ModelSource.ResolveAsync(modelArg, PetalsSharp.Hub.WeightSelection.All, ct);
            }
            var options = new ServerOptions
            {
                ModelDir = source.Directory, ModelName = source.SwarmName, StartBlock = start, EndBlock = end,
                Host = pr.GetValue(host)!, Port = pr.GetValue(port), PublicAddress = pr.GetValue(publicAddress),
                WeightDtype = Cli.ResolveDtype(requestedDtype, source.Directory),
                Quant = format,
                FetchBlocks = fetchBlocks,
                CacheTokens = pr.GetValue(cacheTokens), CacheBytes = pr.GetValue(cacheBytes), KvDtype = requestedKvDtype,
                MaxSessionLength = pr.GetValue(maxSession), SessionIdleTimeout = TimeSpan.FromSeconds(idleSeconds),
                MaxCacheShare = share, CacheOvercommit = over,
                RequestReadTimeout = TimeSpan.FromSeconds(readSeconds),
                MaxRequestMemoryBytes = pr.GetValue(requestMemory) ?? 2L << 30,
                MaxRequestTokens = pr.GetValue(requestTokens),
                PrefillChunkRows = pr.GetValue(prefillChunk),
                InitialPeers = Cli.SplitList(pr.GetValue(initialPeers)), NewSwarm = pr.GetValue(newSwarm),
                PushPeers = Cli.SplitList(pr.GetValue(pushPeers)),
                JoinTimeout = Cli.JoinTimeout(pr.GetValue(joinTimeout)),
                IdentityPath = pr.GetValue(identity), SwarmKey = Cli.LoadSwarmKey(pr.GetValue(swarmKey)), Tls = !pr.GetValue(noTls),
                UpdatePeriod = TimeSpan.FromSeconds(pr.GetValue(updatePeriod)), PublicName = pr.GetValue(publicName),
                DhtPrefix = pr.GetValue(dhtPrefix), MetricsPort = pr.GetValue(metricsPort),
                Adapters = await ModelSource.ResolveAdaptersAsync(Cli.SplitList(pr.GetValue(adapters)), ct),
                PlacementDelay = TimeSpan.FromSeconds(delay), RebalancePeriod = TimeSpan.FromSeconds(period),
                BalanceQuality = PetalsSharp.Swarm.BlockSelection.QualityFromThreshold(threshold),
                FixedThroughput = fixedThroughput, RemeasureThroughput = remeasure,
                Reachability = pr.GetValue(reachability) switch
                {
                    "auto" => Reachability.Auto,
                    "direct" => Reachability.Direct,
                    "relay" => Reachability.Relay,
                    var other => throw new CliException($"--reachability must be auto, direct or relay (got '{other}')"),
                },
                RelayPeers = Cli.SplitList(pr.GetValue(relayPeers)), Relay = relay.Parse(pr),
            };
            if (blocksText is null)
            {
                options = options with { NumBlocks = pr.GetValue(numBlocks) ?? 1 };
                options.Validate();   // before the memory line below: a bad command is one error line
                if (pr.GetValue(numBlocks) is null) options = options with { NumBlocks = BlocksForMemory(options, pr.GetValue(memoryBudget)) };
            }
            return await RunAsync(options, ct);
        });
        return cmd;
    }

    /// <summary>Parses "START:END" (END exclusive); the model's block count is checked when loading.</summary>
    public static (int Start, int End) ParseBlocks(string text)
    {
        var parts = text.Split(':');
        if (parts.Length != 2 || !int.TryParse(parts[0], out var start) || !int.TryParse(parts[1], out var end))
            throw new CliException($"--blocks must be START:END, e.g. 0:12 (got '{text}')");
        if (start < 0 || end <= start)
            throw new CliException($"--blocks {text}: need 0 ≤ START < END");
        return (start, end);
    }

    /// <summary>"auto", "eval" or a positive number.</summary>
    public static (double? Fixed, bool Remeasure) ParseThroughput(string text) => text switch
    {
        "auto" => (null, false),
        "eval" => (null, true),
        _ when double.TryParse(text, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var v)
            && v > 0 && double.IsFinite(v) => (v, false),
        _ => throw new CliException($"--throughput must be auto, eval or a positive number (got '{text}')"),
    };

    /// <summary>N from a memory budget; by default half the memory this process may use, leaving room for the rest.</summary>
    static int BlocksForMemory(ServerOptions options, long? budget)
    {
        var config = PetalsSharp.Models.ModelConfigLoader.Load(options.ModelDir);
        long bytes = budget ?? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / 2;
        int n = options.BlocksForMemory(config, bytes);
        Console.Error.WriteLine($"serving {n} of {config.NumLayers} blocks: they fit in {bytes / 1048576.0:F0} MB (weights + KV cache per block)");
        return n;
    }

    static async Task<int> RunAsync(ServerOptions options, CancellationToken ct)
    {
        // stdout carries only the "listening on" line that scripts and tests parse; logs go to stderr.
        using var loggerFactory = CliLogging.Create(LogLevel.Information);
        var log = loggerFactory.CreateLogger("petals.server");

        var stop = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        void OnSignal(PosixSignalContext c)
        {
            c.Cancel = true;                 // stop cleanly instead of dying with the default handler
            stop.TrySetResult();
        }
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        using var onCancel = ct.Register(() => stop.TrySetResult());

        await using var server = Load(options, loggerFactory);
        await server.StartAsync(ct);
        // Before "listening on", the line scripts wait for: once it is printed, how the server is reached is known.
        if (server.RelayName.Length > 0) Console.Out.WriteLine($"reachable at {server.PublicAddress} via relay {server.RelayName}");
        Console.Out.WriteLine($"listening on {server.Address}");
        if (server.MetricsUrl is { } metricsUrl) Console.Out.WriteLine($"metrics on {metricsUrl}");
        Console.Out.Flush();
        log.LogInformation("{Address} (public {Public}): blocks {Start}:{End} of {Blocks}, {Mb:F1} MB of weights, cache {Tokens} tokens",
            server.Address, server.PublicAddress, server.Start, server.End, server.Config.NumLayers, server.WeightBytes / 1048576.0, server.CacheTokensLeft);

        await stop.Task;
        log.LogInformation("stopping: ending {Sessions} session(s)", server.ActiveSessions);
        await server.StopAsync();
        // The last state change: in a swarm the OFFLINE record is written by StopAsync (records expire anyway).
        log.LogInformation("OFFLINE: stopped serving blocks {Start}:{End}", server.Start, server.End);
        return 0;
    }

    static BlockServer Load(ServerOptions options, ILoggerFactory loggerFactory)
    {
        int span = options.EndBlock - options.StartBlock;
        if (!Console.IsErrorRedirected && !options.AutoPlaced)
        {
            BlockServer? result = null;
            AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) }).Progress().Start(ctx =>
            {
                var task = ctx.AddTask($"loading blocks {options.StartBlock}:{options.EndBlock}", maxValue: span);
                result = BlockServer.Load(options, loggerFactory, new Progress<int>(done => task.Value = done));
                task.Value = span;
            });
            return result!;
        }
        return BlockServer.Load(options, loggerFactory);
    }
}
