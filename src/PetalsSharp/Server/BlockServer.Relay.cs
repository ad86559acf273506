using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Logging;
using PetalsSharp.Relay;

namespace PetalsSharp.Server;

// Reachability: the startup dial-back check, relay mode (reached through a relay, TLS end to end), and hosting a
// relay for others (--relay).
public sealed partial class BlockServer
{
    string? _unixSocket;
    IPEndPoint? _localTcp;
    RelayLink? _relayLink;
    RelayState? _relayState;
    RelayHub? _relayHub;
    Task? _relayAnnouncing;

    /// <summary>"HOST:PORT/ID" of the relay clients reach this server through, or "" when they dial it directly.</summary>
    public string RelayName => Volatile.Read(ref _relayState)?.Relay ?? "";

    /// <summary>The relay link of a relayed server (null when direct): its registrations and current relay.</summary>
    public RelayLink? RelayLink => _relayLink;

    /// <summary>The relay this server runs for others (<see cref="ServerOptions.Relay"/>), or null.</summary>
    public RelayHub? HostedRelay => _relayHub;

    /// <summary>Listens on a Unix socket only: a server in relay mode opens no inbound port.</summary>
    void ListenUnix(KestrelServerOptions k, Action<ListenOptions> configure)
    {
        _unixSocket = Path.Combine(Path.GetTempPath(), $"petals-{Environment.ProcessId}-{Guid.NewGuid():N}"[..40] + ".sock");
        k.ListenUnixSocket(_unixSocket, configure);
    }

    /// <summary>Adds the relay service when this server relays for others (needs the DHT node: its id names the relay).</summary>
    void AddRelayService(WebApplicationBuilder builder, IPAddress bind)
    {
        if (Options.Relay is not { } relay || _dht is null) return;
        _relayHub = new RelayHub(relay, _dht.Id.ToString(), bind, () => RelayHost.HostOf(PublicAddress), _loggerFactory.CreateLogger("petals.relay"));
        RelayGrpcService.AddTo(builder.Services, _relayHub, Options.SwarmKey);
    }

    void MapRelayService(WebApplication app)
    {
        if (_relayHub is null) return;
        RelayGrpcService.UseFrameGuard(app);
        RelayGrpcService.Map(app);
    }



    /// <summary>
    /// Decides how clients reach this server: <see cref="Reachability.Direct"/> as announced, <see cref="Reachability.Relay"/>
    /// through a relay, and <see cref="Reachability.Auto"/> by asking DHT peers to dial the announced address back
    /// (no verdict, as with no peers, counts as reachable). A server that turns out unreachable stops offering
    /// itself as a DHT contact and registers with a relay; returns once one accepted it.
    /// </summary>
    async Task ResolveReachabilityAsync(Dht.DhtNode dht, CancellationToken ct)
    {
        bool relay = Options.Reachability == Reachability.Relay;
        if (Options.Reachability == Reachability.Auto && Options.InitialPeers.Count > 0)
        {
            var address = PublicAddress;
            var check = await dht.CheckReachabilityAsync(address, ct: ct);
            if (check.Reachable == false && Options.RelayPeers.Count == 0 && (await RelayDirectory.FindAsync(dht, ct)).Count == 0)
            {
                // Waiting for a relay that may never come would keep the server from serving anyone at all.
                _logger.LogWarning("{Address} is not reachable from the swarm ({Answers}), and the swarm has no relay: announcing it anyway " +
                    "(start one with `petals dht --relay`, or fix --public-address)", address, string.Join("; ", check.Answers));
            }
            else if (check.Reachable == false)
            {
                _logger.LogWarning("{Address} is not reachable from the swarm ({Answers}); switching to relay mode", address, string.Join("; ", check.Answers));
                dht.Readdress("");
                relay = true;
            }
            else _logger.LogDebug("reachability of {Address}: {Verdict} ({Answers})", address, check.Reachable == true ? "reachable" : "unknown", string.Join("; ", check.Answers));
        }
        else if (relay) _logger.LogInformation("relay mode (--reachability relay): no inbound port; clients reach this server through a relay");
        if (!relay) return;
        EndPoint local = _unixSocket is not null ? new UnixDomainSocketEndPoint(_unixSocket)
            : _localTcp ?? throw new InvalidOperationException("the server listens nowhere a relay could reach");
        _relayLink = RelayLink.Start(new RelayLinkOptions(dht.Id.ToString(), local, FindRelaysAsync)
        {
            SwarmKey = Options.SwarmKey, Logger = _loggerFactory.CreateLogger("petals.relay"),
        }, OnRelayAsync);
        await _relayLink.WaitRegisteredAsync(Options.JoinTimeout + TimeSpan.FromSeconds(30), ct);

        async Task<IReadOnlyList<string>> FindRelaysAsync(CancellationToken token)
        {
            var given = Options.RelayPeers.Select(p => Wire.PeerTarget.Dial(PetalsSharp.Dht.DhtAddress.Parse(p).Address, Options.Tls, PetalsSharp.Dht.DhtAddress.Parse(p).Id?.ToString()));
            var listed = (await RelayDirectory.FindAsync(dht, token)).Where(r => r.PeerId != dht.Id.ToString()).Select(r => r.Dial(Options.Tls));
            return given.Concat(listed).ToList();
        }
    }

    /// <summary>A (new) relay took the server: announce its address now, so clients failing over find it.</summary>
    async Task OnRelayAsync(RelayState state)
    {
        Volatile.Write(ref _relayState, state);
        if (_announcer is not { } announcer) return;
        try { await announcer.RefreshAsync(Stopping); }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            _logger.LogWarning("announcing the new relay address failed (the next update retries): {Message}", e.Message);
        }
    }

    /// <summary>A relay this server runs is announced once the server is ONLINE and directly reachable.</summary>
    async Task AnnounceHostedRelayAsync(Dht.DhtNode dht, CancellationToken ct)
    {
        if (_relayHub is null) return;
        if (_relayLink is not null)
        {
            _logger.LogWarning("--relay ignored: this server is not reachable itself, so it cannot relay for others");
            return;
        }
        _relayAnnouncing = await RelayDirectory.AnnounceAsync(dht, _relayHub, Options.UpdatePeriod, _logger, Stopping);
        _logger.LogInformation("relaying for servers behind NAT (at most {Servers} servers, {Connections} connections and {Bytes} B/s each)",
            _relayHub.Options.MaxServers, _relayHub.Options.MaxConnectionsPerServer, _relayHub.Options.MaxBytesPerSecondPerServer);
    }

    async Task StopRelayAsync()
    {
        var link = Interlocked.Exchange(ref _relayLink, null);
        if (link is not null) await link.DisposeAsync();
        if (_relayAnnouncing is { } announcing) await announcing;
        if (_unixSocket is not null)
        {
            try { File.Delete(_unixSocket); }
            catch (IOException) { }
        }
    }
}
