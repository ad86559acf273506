using System.CommandLine;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using PetalsSharp.Api.Dashboard;

namespace PetalsSharp.Cli.Commands;

/// <summary><c>petals dashboard</c>: a live web page of a swarm (models, block coverage, servers, pings, warnings).</summary>
public static class DashboardCommand
{
    const string Help = """
        Serve a live web page of a swarm until Ctrl+C or SIGTERM: every model with its coverage per block, every
        server (name, address, span, state, throughput, cache room, version), the pings between servers, and
        warnings for uncovered blocks and servers that went away. GET /api/v1/swarm returns the same data as JSON.
        It prints one line, "dashboard on http://HOST:PORT/".

        Examples:
          petals dashboard --initial-peers 10.0.0.5:31337 --port 8080
          petals dashboard --initial-peers 10.0.0.5:31337 --host 0.0.0.0 --port 8080 --min-coverage 2
        """;

    public static Command Create()
    {
        var initialPeers = ModelOpener.InitialPeersOption();
        initialPeers.Required = true;
        var swarmKey = ModelOpener.SwarmKeyOption();
        var host = new Option<string>("--host") { Description = "Interface to listen on (0.0.0.0 = every interface)", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "Port to listen on (0 = any free port)", DefaultValueFactory = _ => 8080 };
        var minCoverage = new Option<int>("--min-coverage") { Description = "Warn when a block has fewer online servers than this", DefaultValueFactory = _ => 1 };
        var refresh = new Option<double>("--refresh") { Description = "Seconds between reads of the DHT", DefaultValueFactory = _ => 1 };
        var noTls = ModelOpener.NoTlsOption();
        var cmd = new Command("dashboard", Help) { initialPeers, swarmKey, host, port, minCoverage, refresh, noTls };
        cmd.SetAction(async (pr, ct) =>
        {
            int min = pr.GetValue(minCoverage);
            if (min < 1) throw new CliException($"--min-coverage must be at least 1 (got {min})");
            double seconds = pr.GetValue(refresh);
            if (!(seconds >= 0.1 && seconds <= 3600)) throw new CliException($"--refresh must be in [0.1, 3600] seconds (got {seconds})");
            int p = pr.GetValue(port);
            if (p is < 0 or > 65535) throw new CliException($"--port {p} is outside [0, 65535]");
            var peers = Cli.SplitList(pr.GetValue(initialPeers));
            foreach (var peer in peers) Dht.DhtAddress.Parse(peer);
            var settings = new DashboardSettings { MinCoverage = min, RefreshPeriod = TimeSpan.FromSeconds(seconds), Tls = !pr.GetValue(noTls) };

            using var loggerFactory = CliLogging.Create(LogLevel.Warning);
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
            using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.Cancel(); });
            using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.Cancel(); });
            await using var dashboard = await DashboardServer.StartAsync(peers, Cli.LoadSwarmKey(pr.GetValue(swarmKey)),
                pr.GetValue(host)!, p, settings, loggerFactory, stop.Token);
            Console.WriteLine($"dashboard on {dashboard.Url}");
            try { await Task.Delay(Timeout.Infinite, stop.Token); }
            catch (OperationCanceledException) { }
            return 0;
        });
        return cmd;
    }
}
