using System.CommandLine;
using System.Runtime.InteropServices;
using PetalsSharp.Dht;
using PetalsSharp.Relay;

namespace PetalsSharp.Cli.Commands;

/// <summary><c>petals dht</c>: a standalone DHT node, typically the bootstrap peer of a swarm.</summary>
public static class DhtCommand
{
    const string Help = """
        Run a DHT node (e.g. the bootstrap peer of a swarm) until Ctrl+C or SIGTERM. It prints one line,
        "initial peers: HOST:PORT/ID", which servers and clients pass as --initial-peers (plain HOST:PORT works too).

        Examples:
          petals dht --port 31337 --identity bootstrap.id
          petals dht --port 31338 --identity second.id --initial-peers 10.0.0.5:31337/<ID>
          openssl rand -hex 32 > swarm.key && petals dht --port 31337 --swarm-key swarm.key   # private swarm
          petals dht --port 31339 --relay --initial-peers 10.0.0.5:31337/<ID>   # relay for servers behind NAT
        """;

    public static Command Create()
    {
        var host = new Option<string>("--host") { Description = "Interface to listen on", DefaultValueFactory = _ => "0.0.0.0" };
        var port = new Option<int>("--port") { Description = "Port to listen on (0 = any free port)", Required = true };
        var identity = new Option<string?>("--identity")
        {
            Description = "Private key file (PEM); created on first run so the node keeps its id across restarts",
        };
        var swarmKey = new Option<string?>("--swarm-key")
        {
            Description = "Private swarm secret: a file with at least 32 bytes as hex or base64; every member needs the same file",
        };
        var peers = new Option<string?>("--initial-peers") { Description = "Peers to join through: ADDR[,ADDR] with ADDR = HOST:PORT or HOST:PORT/ID" };
        var publicAddress = new Option<string?>("--public-address") { Description = "HOST:PORT to announce instead of the listening address" };
        var joinTimeout = new Option<double>("--join-timeout") { Description = "Seconds to keep retrying initial peers that cannot be reached before giving up (0 = one try)", DefaultValueFactory = _ => 60 };
        var noTls = new Option<bool>("--no-tls") { Description = "Serve and dial without TLS (debugging, benchmarks); every node of the swarm must agree" };
        var relay = new RelayOptionSet();
        var cmd = new Command("dht", Help) { host, port, identity, swarmKey, peers, publicAddress, joinTimeout, noTls };
        relay.AddTo(cmd);
        cmd.SetAction(async (pr, ct) =>
        {
            var initial = (pr.GetValue(peers) ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            foreach (var p in initial) DhtAddress.Parse(p);
            var identityPath = pr.GetValue(identity);
            var relayOptions = relay.Parse(pr);
            var keyPath = pr.GetValue(swarmKey);
            // stdout carries only the "initial peers:" line; the node's own log lines (joining, failed rounds) go to stderr.
            using var loggerFactory = CliLogging.Create(Microsoft.Extensions.Logging.LogLevel.Information);
            var nodeIdentity = identityPath is null ? NodeIdentity.CreateEphemeral() : NodeIdentity.LoadOrCreate(identityPath);
            var options = new DhtNodeOptions
            {
                Logger = loggerFactory.CreateLogger("petals.dht"),
                Host = pr.GetValue(host)!,
                Port = pr.GetValue(port),
                PublicAddress = pr.GetValue(publicAddress),
                Identity = nodeIdentity,
                SwarmKey = keyPath is null ? null : SwarmKey.Load(keyPath),
                JoinTimeout = Cli.JoinTimeout(pr.GetValue(joinTimeout)),
                Tls = !pr.GetValue(noTls),
            };
            // SIGINT and SIGTERM are the normal way to stop a bootstrap node: take them over so the node shuts down
            // cleanly and the exit code is 0 rather than the runtime's 130/143.
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
            using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.Cancel(); });
            using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.Cancel(); });
            DhtNode? started = null;
            var hub = relayOptions is null ? null : new RelayHub(relayOptions, nodeIdentity.Id.ToString(),
                RelayHost.BindAddress(options.Host), () => RelayHost.HostOf(started?.Address ?? ""), loggerFactory.CreateLogger("petals.relay"));
            if (hub is not null) options = RelayHost.Attach(options, hub);
            await using var node = started = await DhtNode.StartAsync(options, stop.Token);
            if (initial.Length > 0) await node.BootstrapAsync(initial, stop.Token);
            Console.WriteLine($"initial peers: {node.PeerAddress}");
            var announcing = hub is null ? Task.CompletedTask
                : await RelayDirectory.AnnounceAsync(node, hub, TimeSpan.FromSeconds(60), loggerFactory.CreateLogger("petals.relay"), stop.Token);
            if (hub is not null) Console.WriteLine($"relay: at most {hub.Options.MaxServers} servers");
            try { await Task.Delay(Timeout.Infinite, stop.Token); }
            catch (OperationCanceledException) { }
            await announcing;
            return 0;
        });
        return cmd;
    }
}
