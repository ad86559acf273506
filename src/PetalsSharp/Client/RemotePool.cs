using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using PetalsSharp.Models;
using PetalsSharp.Swarm;

namespace PetalsSharp.Client;

/// <summary>
/// The servers a remote stack (and its slices) may use: their connections, temporary bans of servers that failed,
/// and, for a DHT-backed pool, a way to discover more. Chains are planned from a snapshot of the usable servers.
/// </summary>
internal sealed partial class RemotePool : IDisposable, IAsyncDisposable
{
    readonly ConcurrentDictionary<string, ServerConnection> _servers = new();
    // Connections the swarm stopped listing as they were; open sessions may still run on them until the pool ends.
    readonly ConcurrentBag<ServerConnection> _retired = [];
    // Info probes in flight, so a discovery during a slow probe joins it instead of dialing again.
    readonly ConcurrentDictionary<string, Task<Exception?>> _probing = new();
    volatile bool _closed;
    readonly Lock _memory = new();
    BanList _bans = BanList.Empty;
    RttEstimator _rtts = RttEstimator.Empty;
    readonly Func<CancellationToken, Task<IReadOnlyList<ServerInfo>>>? _discover;
    readonly LocalFingerprints _fingerprints;
    readonly ConcurrentDictionary<string, IReadOnlyDictionary<string, double>> _nextPings = new();
    IAsyncDisposable? _owned;
    readonly CancellationTokenSource _stop = new();
    Task? _refresh;

    RemotePool(ModelConfig config, RemoteOptions options, LocalFingerprints fingerprints,
        Func<CancellationToken, Task<IReadOnlyList<ServerInfo>>>? discover)
    {
        Config = config;
        Options = options;
        _fingerprints = fingerprints;
        _discover = discover;
    }

    public ModelConfig Config { get; }
    public RemoteOptions Options { get; }
    public IReadOnlyList<ServerConnection> Servers => _servers.Values.OrderBy(s => s.Address, StringComparer.Ordinal).ToList();

    /// <summary>The connection to plan new calls on (a just-retired one if the plan predates a refresh).</summary>
    public ServerConnection Get(string address) =>
        _servers.TryGetValue(address, out var server) ? server
        : _retired.FirstOrDefault(s => s.Address == address) ?? throw new KeyNotFoundException($"no connection to {address}");

    /// <summary>Failures inside autograd backward nodes, which cannot throw (see RemoteSequential.Backward).</summary>
    public ConcurrentQueue<Exception> BackwardErrors { get; } = new();

    /// <summary>
    /// Connects to every reachable address; unreachable ones are skipped (a swarm always has some dead entries)
    /// unless none answers. <paramref name="discover"/> lists current server addresses when a chain can't be found;
    /// with it, <paramref name="peers"/> came from the DHT and are only claims, so they are probed (see
    /// <see cref="ProbeAsync"/>) rather than waited for.
    /// </summary>
    public static async Task<RemotePool> ConnectAsync(ModelConfig config, IEnumerable<string> peers, RemoteOptions options,
        Checkpoint? local, CancellationToken ct, Func<CancellationToken, Task<IReadOnlyList<ServerInfo>>>? discover = null)
    {
        var addresses = peers.Select(p => p.Trim()).Where(p => p.Length > 0).Distinct().ToList();
        if (addresses.Count == 0) throw new ArgumentException("no peers given");
        var pool = new RemotePool(config, options, new LocalFingerprints(options.VerifyWeights ? local : null), discover);
        var errors = discover is null
            ? await pool.AddAsync(addresses, options.ConnectTimeout, untilCovered: false, ct).ConfigureAwait(false)
            : await pool.ProbeAsync(addresses, ct).ConfigureAwait(false);
        if (pool._servers.IsEmpty)
        {
            await pool.DisposeAsync().ConfigureAwait(false);
            throw errors.Count == 1 ? errors[0] : new AggregateException("no server could be reached", errors);
        }
        if (options.RefreshPeriod > TimeSpan.Zero) pool._refresh = pool.RefreshLoopAsync(options.RefreshPeriod);
        return pool;
    }

    /// <summary>Bans a failed server for 15 s, doubling with every consecutive failure (capped at 5 min).</summary>
    public void Ban(string address, Exception? cause = null)
    {
        Options.Logger.LogWarning("server {Address} failed, banning it for a while: {Message}", address, cause?.Message ?? "no answer");
        lock (_memory)
        {
            _bans = (_bans with { BaseDuration = Options.BanTime }).Ban(address, DateTimeOffset.UtcNow);
            _rtts = _rtts.ObserveFailure(address, DateTimeOffset.UtcNow);
        }
    }

    /// <summary>
    /// A server that answered busy (RESOURCE_EXHAUSTED: no cache room now) is routed around for its retry hint, not
    /// banned: it is alive and will have room again.
    /// </summary>
    public void MarkBusy(string address, TimeSpan retryAfter, Exception? cause = null)
    {
        Options.Logger.LogInformation("server {Address} is busy, routing around it for {Seconds:F1} s: {Message}", address,
            retryAfter.TotalSeconds, cause?.Message ?? "");
        lock (_memory) _bans = _bans.Busy(address, DateTimeOffset.UtcNow, retryAfter);
    }

    /// <summary>A server that answered ends its failure streak.</summary>
    public void Success(string address)
    {
        lock (_memory) _bans = _bans.Success(address);
    }

    public bool IsBanned(string address)
    {
        if (IsDistrusted(address)) return true;
        lock (_memory) return _bans.IsBanned(address, DateTimeOffset.UtcNow);
    }

    /// <summary>Feeds a measured round trip into the moving average routing uses.</summary>
    public void ObserveRtt(string address, double seconds)
    {
        lock (_memory) _rtts = _rtts.Observe(address, seconds, DateTimeOffset.UtcNow);
    }

    /// <summary>Pings every known server once (an Info call) to refresh the round-trip estimates.</summary>
    public Task PingAllAsync(CancellationToken ct) => Task.WhenAll(_servers.Values.Select(async s =>
    {
        try { ObserveRtt(s.Address, (await s.PingAsync(ct).ConfigureAwait(false)).TotalSeconds); }
        catch (Exception e) when (Retries.IsServerFailure(e)) { Ban(s.Address, e); }
    }));

    /// <summary>Reads the swarm again: connects to new servers and keeps what each measured to its successors.</summary>
    public async Task DiscoverAsync(CancellationToken ct)
    {
        if (_discover is null) return;
        var servers = await _discover(ct).ConfigureAwait(false);
        Learn(servers);
        if (servers.Count > 0) Retire(servers);   // an empty read is more likely a DHT hiccup than an empty swarm
        await ProbeAsync(servers.Select(s => s.Dial(tls: true)).Distinct().ToList(), ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Forgets servers the swarm no longer lists as ONLINE with the span they had when we connected: a dead server
    /// (its record expired) or one that moved to other blocks. Planning on the connect-time Info would keep choosing
    /// them; a moved server is connected again by the caller and so planned with its new span.
    /// </summary>
    void Retire(IReadOnlyList<ServerInfo> online)
    {
        var announced = online.ToLookup(s => s.Address);
        foreach (var (address, server) in _servers)
        {
            if (announced[address].Any(s => s.Start == server.Info.StartBlock && s.End == server.Info.EndBlock)) continue;
            if (_servers.TryRemove(new KeyValuePair<string, ServerConnection>(address, server))) _retired.Add(server);
        }
    }

    /// <summary>Remembers the next-server pings servers announced (used for server-to-server hop costs).</summary>
    public void Learn(IEnumerable<ServerInfo> servers)
    {
        foreach (var s in servers) _nextPings[s.Address] = s.NextPings;
    }

    /// <summary>
    /// The route table refreshes in the background: every period the client re-measures its RTTs and, in a DHT
    /// swarm, connects to servers that joined. (After a failure, planning refreshes at once.)
    /// </summary>
    async Task RefreshLoopAsync(TimeSpan period)
    {
        using var timer = new PeriodicTimer(period);
        try
        {
            while (await timer.WaitForNextTickAsync(_stop.Token).ConfigureAwait(false))
            {
                try
                {
                    if (_discover is not null) await DiscoverAsync(_stop.Token).ConfigureAwait(false);
                    await PingAllAsync(_stop.Token).ConfigureAwait(false);
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    // Planning still works on what is known; the next period tries again.
                    Options.Logger.LogWarning(e, "refreshing the swarm's servers failed; retrying in {Period} s", period.TotalSeconds);
                }
            }
        }
        catch (OperationCanceledException) { }
    }

    RoutingInputs Inputs(int start, int end, long? cacheTokensNeeded, RouteOverrides? routing)
    {
        var now = DateTimeOffset.UtcNow;
        lock (_memory)
            return new RoutingInputs(_servers.Values.Select(s => s.ToServerInfo()).ToList(), start, end)
            {
                ClientRtts = _rtts.Snapshot(now),
                NextPings = _nextPings,
                BannedPeers = _bans.BannedPeers(now),
                CacheTokensNeeded = cacheTokensNeeded,
                AllowedPeers = routing?.AllowedServers ?? Options.AllowedServers,
                // A server caught lying is never planned, even when it alone holds a block: no route beats a wrong one.
                BlockedPeers = _liars.IsEmpty ? routing?.BlockedServers ?? Options.BlockedServers
                    : new HashSet<string>((routing?.BlockedServers ?? Options.BlockedServers ?? new HashSet<string>()).Concat(Liars)),
                Adapter = (string.IsNullOrEmpty(routing?.Adapter) ? Options.ActiveAdapter : routing.Adapter) is { Length: > 0 } adapter ? adapter : null,
                RequireExact = Options.RequireExact,
            };
    }

    /// <summary>
    /// A chain over <c>[start, end)</c>: the minimum-latency path (Dijkstra over client RTTs, per-block compute
    /// and cache room) for inference, a throughput-spreading random one for forward/backward. Banned servers are
    /// avoided except where every holder of a block is banned; the DHT is asked for more servers when the known
    /// ones cannot cover the range.
    /// </summary>
    public async Task<IReadOnlyList<ChainHop>> PlanAsync(int start, int end, CancellationToken ct, long? cacheTokensNeeded = null,
        bool forInference = true, RouteOverrides? routing = null)
    {
        try
        {
            var chain = Plan(start, end, cacheTokensNeeded, forInference, routing);
            // A banned server in the chain means every known holder of some block failed: look for newcomers first.
            if (_discover is null || !chain.Any(h => IsBanned(h.Server.Address))) return chain;
        }
        catch (SwarmException) when (_discover is not null) { }
        await DiscoverAsync(ct).ConfigureAwait(false);
        return Plan(start, end, cacheTokensNeeded, forInference, routing);
    }

    /// <summary>
    /// Plans <c>[start, end)</c> again after a failure, as retry <paramref name="retry"/> (1-based). Right after a
    /// failure the blocks may be uncovered for a while (a server is moving in), so an uncovered range is waited for
    /// with backoff, each wait counting as a retry, until <see cref="RemoteOptions.MaxRetries"/>. Returns the chain
    /// and the retry that found it.
    /// </summary>
    /// <exception cref="SwarmException">The range was still uncovered at the last retry.</exception>
    public async Task<(IReadOnlyList<ChainHop> Chain, int Retry)> ReplanAsync(int start, int end, int retry, CancellationToken ct,
        long? cacheTokensNeeded = null, bool forInference = true, RouteOverrides? routing = null)
    {
        for (; ; retry++)
        {
            try { return (await PlanAsync(start, end, ct, cacheTokensNeeded, forInference, routing).ConfigureAwait(false), retry); }
            catch (SwarmException) when (retry < Options.MaxRetries)
            {
                await Task.Delay(Retries.Backoff(Options, retry + 1), ct).ConfigureAwait(false);
            }
        }
    }

    /// <summary>The chain that would be planned now, without discovery (synchronous, for opening sessions).</summary>
    public IReadOnlyList<ChainHop> Plan(int start, int end, long? cacheTokensNeeded = null, bool forInference = true,
        RouteOverrides? routing = null)
    {
        var inputs = Inputs(start, end, cacheTokensNeeded, routing);
        var route = forInference ? RoutePlanner.MinLatency(inputs) : RoutePlanner.MaxThroughput(inputs, Random.Shared);
        return route.Chain;
    }

    /// <summary>Something whose life ends with the pool (the client's DHT node).</summary>
    public void Own(IAsyncDisposable resource) => _owned = resource;

    public void Dispose()
    {
        _stop.Cancel();
        try { _refresh?.Wait(TimeSpan.FromSeconds(5)); }
        catch (AggregateException) { /* a refresh that failed while stopping changes nothing */ }
        CloseConnections();
        // The owned DHT node only stops asynchronously; a synchronous Dispose has to wait for it.
        _owned?.DisposeAsync().AsTask().GetAwaiter().GetResult();
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        if (_refresh is not null)
        {
            try { await _refresh.WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false); }
            catch (Exception e) when (e is TimeoutException or OperationCanceledException) { /* stopping anyway */ }
        }
        CloseConnections();
        if (_owned is not null) await _owned.DisposeAsync().ConfigureAwait(false);
    }

    void CloseConnections()
    {
        _closed = true;
        _stop.Dispose();
        foreach (var s in _servers.Values.Concat(_retired)) s.Dispose();
        _servers.Clear();
        _retired.Clear();
    }
}
