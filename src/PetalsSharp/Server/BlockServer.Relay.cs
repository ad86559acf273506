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
        if (Options.Reachability == Reachability.Relay)
        {
            _logger.LogInformation("relay mode (--reachability relay): no inbound port; clients reach this server through a relay");
            await StartRelayLinkAsync(dht, ct);
            return;
        }
        if (Options.Reachability != Reachability.Auto || Options.InitialPeers.Count == 0) return;
        _directAddress = DirectAddress(dht);
        if (await CheckDirectAsync(dht, _directAddress, ct) == false) await StartRelayLinkAsync(dht, ct);
    }

    /// <summary>
    /// Asks peers to dial <paramref name="address"/> back. False only when it is unreachable and the swarm has a relay
    /// to go to: with none, the server announces the address anyway, since waiting for a relay that may never come
    /// would keep it from serving anyone at all.
    /// </summary>
    async Task<bool> CheckDirectAsync(Dht.DhtNode dht, string address, CancellationToken ct)
    {
        var check = await dht.CheckReachabilityAsync(address, ct: ct);
        var answers = string.Join("; ", check.Answers);
        if (check.Reachable != false)
        {
            _logger.LogDebug("reachability of {Address}: {Verdict} ({Answers})", address, check.Reachable == true ? "reachable" : "unknown", answers);
            return true;
        }
        if (Options.RelayPeers.Count == 0 && (await RelayDirectory.FindAsync(dht, ct)).Count == 0)
        {
            _logger.LogWarning("{Address} is not reachable from the swarm ({Answers}), and the swarm has no relay: announcing it anyway " +
                "(start one with `petals dht --relay`, or fix --public-address)", address, answers);
            return true;
        }
        _logger.LogWarning("{Address} is not reachable from the swarm ({Answers}); switching to relay mode", address, answers);
        return false;
    }

    /// <summary>Stops offering this node as a DHT contact and registers with a relay; returns once one accepted it.</summary>
    async Task StartRelayLinkAsync(Dht.DhtNode dht, CancellationToken ct)
    {
        if (dht.Address.Length > 0) dht.Readdress("");
        EndPoint local = _unixSocket is not null ? new UnixDomainSocketEndPoint(_unixSocket)
            : _localTcp ?? throw new InvalidOperationException("the server listens nowhere a relay could reach");
        var link = RelayLink.Start(new RelayLinkOptions(dht.Id.ToString(), local, FindRelaysAsync)
        {
            SwarmKey = Options.SwarmKey, Logger = _loggerFactory.CreateLogger("petals.relay"),
        }, OnRelayAsync);
        _relayLink = link;
        await link.WaitRegisteredAsync(Options.JoinTimeout + TimeSpan.FromSeconds(30), ct);

        async Task<IReadOnlyList<string>> FindRelaysAsync(CancellationToken token)
        {
            var given = Options.RelayPeers.Select(p => Wire.PeerTarget.Dial(PetalsSharp.Dht.DhtAddress.Parse(p).Address, Options.Tls, PetalsSharp.Dht.DhtAddress.Parse(p).Id?.ToString()));
            var listed = (await RelayDirectory.FindAsync(dht, token)).Where(r => r.PeerId != dht.Id.ToString()).Select(r => r.Dial(Options.Tls));
            return given.Concat(listed).ToList();
        }
    }

    /// <summary>The direct address the last check was about (auto mode only).</summary>
    string? _directAddress;

    /// <summary>Replaces how the current direct address is found (tests: an address that "changed").</summary>
    internal Func<string>? DirectAddressProbe { get; set; }

    /// <summary>
    /// The address clients would dial directly now: <c>--public-address</c>, else the bound one, whose wildcard host
    /// is this machine's interface address at this moment (a new DHCP lease changes it).
    /// </summary>
    string DirectAddress(Dht.DhtNode dht)
    {
        if (DirectAddressProbe is { } probe) return probe();
        if (Options.PublicAddress is { } given) return given;
        if (_localTcp is { } local && (IPAddress.Any.Equals(_boundIp) || IPAddress.IPv6Any.Equals(_boundIp)))
            return $"{PetalsSharp.Dht.DhtNode.AnnouncedHost(_boundIp)}:{local.Port}";
        return dht.Address.Length > 0 ? dht.Address : Address;
    }

    IPAddress? _boundIp;

    /// <summary>Whether the direct address can change while the server runs (so it is watched).</summary>
    bool AddressMayChange => Options.Reachability == Reachability.Auto && Options.InitialPeers.Count > 0 && Options.PublicAddress is null
        && (IPAddress.Any.Equals(_boundIp) || IPAddress.IPv6Any.Equals(_boundIp));

    /// <summary>
    /// Checks again when the direct address changed (auto mode): a direct server that became unreachable goes to a
    /// relay, a relayed one that became reachable leaves it; either way the new address is announced at once.
    /// </summary>
    internal async Task CheckAddressAsync(CancellationToken ct)
    {
        if (_dht is not { } dht || Options.Reachability != Reachability.Auto || _directAddress is null) return;
        var now = DirectAddress(dht);
        if (now == _directAddress) return;
        _logger.LogInformation("this server's address changed from {Old} to {New}; checking its reachability again", _directAddress, now);
        _directAddress = now;
        bool reachable = await CheckDirectAsync(dht, now, ct);
        if (!reachable)
        {
            if (_relayLink is null) await StartRelayLinkAsync(dht, ct);   // its registration announces the relay's address
            return;
        }
        var link = Interlocked.Exchange(ref _relayLink, null);
        if (link is not null)
        {
            await link.DisposeAsync();
            _logger.LogInformation("reachable directly at {Address} again; left the relay", now);
        }
        Volatile.Write(ref _relayState, null);
        dht.Readdress(now);
        if (_announcer is { } announcer) await announcer.RefreshAsync(ct);
    }

    /// <summary>Re-checks the address every update period while it may change.</summary>
    void StartAddressWatch()
    {
        if (!AddressMayChange) return;
        _addressWatch = Task.Run(async () =>
        {
            using var timer = new PeriodicTimer(Options.UpdatePeriod);
            try
            {
                while (await timer.WaitForNextTickAsync(Stopping))
                {
                    try { await CheckAddressAsync(Stopping); }
                    catch (Exception e) when (!Stopping.IsCancellationRequested)
                    {
                        _logger.LogWarning("checking this server's address again failed (will retry): {Message}", e.Message);
                    }
                }
            }
            catch (OperationCanceledException) { }
        });
    }

    Task? _addressWatch;

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
        if (_addressWatch is { } watch) await watch;
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
