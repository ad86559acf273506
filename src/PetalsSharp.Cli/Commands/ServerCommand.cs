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
        var blocks = new Option<string>("--blocks") { Description = "Span to serve, START:END (END exclusive), e.g. 0:12", Required = true };
        var host = new Option<string>("--host") { Description = "Interface to bind", DefaultValueFactory = _ => "0.0.0.0" };
        var port = new Option<int>("--port") { Description = "Port to bind (0 = any free port)", DefaultValueFactory = _ => ServerOptions.DefaultPort };
        var publicAddress = new Option<string?>("--public-address") { Description = "Address announced to clients (default: the bound host:port)" };
        var dtype = Cli.DtypeOption();
        var cacheTokens = new Option<long?>("--cache-tokens") { Description = $"KV-cache room in tokens of one row across the span (default {ServerOptions.DefaultCacheTokens})" };
        var cacheBytes = new Option<long?>("--cache-bytes") { Description = "KV-cache room in bytes (instead of --cache-tokens)" };
        var maxSession = new Option<int?>("--max-session-length") { Description = "Largest max_length a session may ask for (default min(max_position_embeddings, 8192))" };
        var idle = new Option<double>("--session-idle-timeout") { Description = "Seconds without a message before a session is closed", DefaultValueFactory = _ => 300 };
        var initialPeers = new Option<string?>("--initial-peers") { Description = "Join the swarm through these DHT nodes: ADDR[,ADDR], ADDR = HOST:PORT or HOST:PORT/ID" };
        var newSwarm = new Option<bool>("--new-swarm") { Description = "Start a new swarm (this server is its first DHT node)" };
        var identity = new Option<string?>("--identity") { Description = "Key pair file (created on first use): a restarted server keeps its node id" };
        var swarmKey = new Option<string?>("--swarm-key") { Description = "Private swarm secret file: only nodes with the same key can join, store or be served" };
        var updatePeriod = new Option<double>("--update-period") { Description = "Seconds between announcements (records expire after twice this)", DefaultValueFactory = _ => 60 };
        var publicName = new Option<string?>("--public-name") { Description = "Name shown in swarm tables" };
        var dhtPrefix = new Option<string?>("--dht-prefix") { Description = "DHT key prefix (default: the model folder's name, '.' and ' ' as '-')" };
        var cmd = new Command("server", "Serve a span of a model's transformer blocks over gRPC.\n\nExamples:\n  petals server -m ./my-model --blocks 0:12 --port 31330 --new-swarm\n  petals server -m ./my-model --blocks 12:24 --port 31331 --initial-peers 10.0.0.5:31330")
        {
            model, blocks, host, port, publicAddress, dtype, cacheTokens, cacheBytes, maxSession, idle,
            initialPeers, newSwarm, identity, swarmKey, updatePeriod, publicName, dhtPrefix,
        };
        cmd.SetAction(async (pr, ct) =>
        {
            var (start, end) = ParseBlocks(pr.GetValue(blocks)!);
            if (pr.GetValue(cacheTokens) is not null && pr.GetValue(cacheBytes) is not null)
                throw new CliException("give --cache-tokens or --cache-bytes, not both");
            double idleSeconds = pr.GetValue(idle);
            if (!(idleSeconds > 0) || idleSeconds > TimeSpan.MaxValue.TotalSeconds / 2)
                throw new CliException($"--session-idle-timeout must be a positive number of seconds (got {idleSeconds})");
            var modelDir = pr.GetValue(model)!;
            if (!Directory.Exists(modelDir)) throw new CliException($"model folder not found: {modelDir}");
            var options = new ServerOptions
            {
                ModelDir = modelDir, StartBlock = start, EndBlock = end,
                Host = pr.GetValue(host)!, Port = pr.GetValue(port), PublicAddress = pr.GetValue(publicAddress),
                WeightDtype = Cli.ParseDtype(pr.GetValue(dtype)!),
                CacheTokens = pr.GetValue(cacheTokens), CacheBytes = pr.GetValue(cacheBytes),
                MaxSessionLength = pr.GetValue(maxSession), SessionIdleTimeout = TimeSpan.FromSeconds(idleSeconds),
                InitialPeers = Cli.SplitList(pr.GetValue(initialPeers)), NewSwarm = pr.GetValue(newSwarm),
                IdentityPath = pr.GetValue(identity), SwarmKey = Cli.LoadSwarmKey(pr.GetValue(swarmKey)),
                UpdatePeriod = TimeSpan.FromSeconds(pr.GetValue(updatePeriod)), PublicName = pr.GetValue(publicName),
                DhtPrefix = pr.GetValue(dhtPrefix),
            };
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

    static async Task<int> RunAsync(ServerOptions options, CancellationToken ct)
    {
        using var loggerFactory = LoggerFactory.Create(b => b
            // stdout carries only the "listening on" line that scripts and tests parse; logs go to stderr.
            .AddConsole(o => o.LogToStandardErrorThreshold = LogLevel.Trace)
            .AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss "; })
            .AddFilter("Microsoft", LogLevel.Warning)
            .AddFilter("Grpc", LogLevel.Warning)
            .SetMinimumLevel(LogLevel.Information));
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
        Console.Out.WriteLine($"listening on {server.Address}");
        Console.Out.Flush();
        log.LogInformation("{Address} (public {Public}): blocks {Start}:{End} of {Blocks}, {Mb:F1} MB of weights, cache {Tokens} tokens",
            server.Address, server.PublicAddress, server.Start, server.End, server.Config.NumLayers, server.WeightBytes / 1048576.0, server.CacheTokensLeft);

        await stop.Task;
        log.LogInformation("stopping: ending {Sessions} session(s)", server.ActiveSessions);
        await server.StopAsync();
        return 0;
    }

    static BlockServer Load(ServerOptions options, ILoggerFactory loggerFactory)
    {
        int span = options.EndBlock - options.StartBlock;
        if (!Console.IsErrorRedirected)
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
