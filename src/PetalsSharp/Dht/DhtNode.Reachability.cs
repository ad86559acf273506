using System.Net;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using PetalsSharp.Wire;

namespace PetalsSharp.Dht;

/// <summary>What the peers asked to dial a server back said: reachable (someone got through), unreachable (every answer was a failed dial), or unknown (nobody answered).</summary>
/// <param name="Reachable">true, false, or null when no peer gave a verdict.</param>
/// <param name="Answers">One line per peer asked, for the log.</param>
public sealed record ReachabilityResult(bool? Reachable, IReadOnlyList<string> Answers);

// Reachability checks (dial-back), as Petals does through libp2p's AutoNAT: a server asks peers to dial its
// announced address, because only someone outside can tell whether a NAT or firewall is in the way.
public sealed partial class DhtNode
{
    /// <summary>At most this many dial-backs run at once on one node; more get RESOURCE_EXHAUSTED.</summary>
    public const int MaxConcurrentDialBacks = 4;

    readonly SemaphoreSlim _dialBacks = new(MaxConcurrentDialBacks, MaxConcurrentDialBacks);

    /// <summary>Dial-back requests per caller address: 1 per second in bursts of 5, loopback included (the check is cheap to ask and costly to answer).</summary>
    public RequestQuota DialBackQuota { get; } = new(1, 5, exemptLoopback: false);

    /// <summary>
    /// Asks up to <paramref name="peers"/> known nodes (initial peers first) to dial <paramref name="address"/> and
    /// call Info there, pinned to this node's id. Reachable if any got through; unreachable if every verdict was a
    /// failed dial; unknown if nobody gave one (no peers, all busy): callers treat unknown as reachable, as Petals does.
    /// </summary>
    public async Task<ReachabilityResult> CheckReachabilityAsync(string address, int peers = 3, CancellationToken ct = default)
    {
        var initial = _initialPeers.Select(p => DhtAddress.TryParse(p, out var a, out var id) ? (a, id) : (null, null)).ToList();
        var candidates = _table.FindClosest(Id, 4 * peers)
            .OrderBy(c => initial.Any(p => p.a == c.Address) ? 0 : 1)
            .Take(peers).ToList();
        var answers = await Task.WhenAll(candidates.Select(async c =>
        {
            try
            {
                var (ok, error) = await _rpc.DialBackAsync(c, address, TimeSpan.FromSeconds(15), ct).ConfigureAwait(false);
                return (Verdict: (bool?)ok, Line: ok ? $"{c.Address}: reached it" : $"{c.Address}: could not dial it ({error})");
            }
            catch (Exception e) when (e is RpcException or DhtException && !ct.IsCancellationRequested)
            {
                return (Verdict: (bool?)null, Line: $"{c.Address}: no verdict ({(e is RpcException r ? $"{r.StatusCode} {r.Status.Detail}" : e.Message)})");
            }
        })).ConfigureAwait(false);
        bool? reachable = answers.Any(a => a.Verdict == true) ? true : answers.Any(a => a.Verdict == false) ? false : null;
        return new ReachabilityResult(reachable, answers.Select(a => a.Line).ToList());
    }

    /// <summary>
    /// Answers a dial-back: dials <paramref name="address"/>'s port on <paramref name="caller"/>'s own IP (the
    /// address must name that IP), TLS pinned to <paramref name="expected"/>, and calls the block service's Info
    /// with a 5 s deadline. Null when the node cannot judge (the address names another host): no verdict, since a
    /// server may well leave through another IP than the one it is reached at.
    /// </summary>
    internal async Task<(bool? Reachable, string Error)> DialBackAsync(string address, NodeId expected, string? caller, CancellationToken ct)
    {
        if (!DhtAddress.TryParse(address, out var hostPort, out _)) return (null, $"'{address}' is not HOST:PORT");
        var callerIp = RequestQuota.AddressOf(caller) is { } c && IPAddress.TryParse(c, out var ip) ? Normalize(ip) : null;
        if (callerIp is null) return (null, "the caller's IP address is unknown");
        int colon = hostPort.LastIndexOf(':');
        var host = hostPort[..colon].Trim('[', ']');
        IPAddress[] resolved;
        try { resolved = IPAddress.TryParse(host, out var literal) ? [literal] : await Dns.GetHostAddressesAsync(host, ct).ConfigureAwait(false); }
        catch (System.Net.Sockets.SocketException) { return (null, $"cannot resolve '{host}'"); }
        // Dialing only the caller's own IP keeps the check from aiming this node at third parties, and dialing the
        // IP itself (not the name again) keeps a name that changes between the two lookups from doing the same.
        if (!resolved.Select(Normalize).Contains(callerIp))
            return (null, $"'{host}' is not the caller's address {callerIp}; a node dials back only the address a check comes from");
        var target = (callerIp.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{callerIp}]" : callerIp.ToString()) + hostPort[colon..];
        using var channel = PeerChannels.Create(PeerTarget.Dial(target, _options.Tls, expected.ToString()), new PeerChannelOptions(64 * 1024)
        {
            ConnectTimeout = TimeSpan.FromSeconds(5),
        });
        try
        {
            var client = new Wire.V1.BlockService.BlockServiceClient(SwarmAuth.Apply(channel, _options.SwarmKey));
            await client.InfoAsync(new Wire.V1.InfoRequest(), deadline: DateTime.UtcNow.AddSeconds(5), cancellationToken: ct).ConfigureAwait(false);
            return (true, "");
        }
        catch (RpcException e)
        {
            // Coarse on purpose: the answer goes to whoever asked, and must not turn this node into a port scanner.
            var why = PeerTls.IdentityMismatch(e) is not null ? "another node answers there" : $"no Info answer ({e.StatusCode})";
            _log.LogDebug("dial-back to {Address} failed: {Reason}", target, e.Status.Detail);
            return (false, why);
        }
    }

    static IPAddress Normalize(IPAddress ip) => ip.IsIPv4MappedToIPv6 ? ip.MapToIPv4() : ip;

    internal bool TryEnterDialBack() => _dialBacks.Wait(0);
    internal void ExitDialBack() => _dialBacks.Release();

    /// <summary>
    /// Changes the address this node announces to peers: a server that turned out unreachable stops offering
    /// itself as a DHT contact (empty = client mode: it still reads and stores, but peers never add it).
    /// </summary>
    public void Readdress(string address)
    {
        if (address.Length > 0) DhtAddress.Parse(address);
        Address = address;
        _selfContact = DhtWire.ToWire(new Contact(Id, Identity.PublicKey, address));
        _log.LogInformation("DHT node {Id} now announces {Address}", Id, address.Length == 0 ? "no address (client mode)" : address);
    }
}
