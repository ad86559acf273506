using System.Collections.Concurrent;
using PetalsSharp.Models;
using PetalsSharp.Swarm;

namespace PetalsSharp.Client;

/// <summary>
/// The servers a remote stack (and its slices) may use: their connections, temporary bans of servers that failed,
/// and, for a DHT-backed pool, a way to discover more. Chains are planned from a snapshot of the usable servers.
/// </summary>
internal sealed class RemotePool : IDisposable
{
    readonly ConcurrentDictionary<string, ServerConnection> _servers = new();
    readonly ConcurrentDictionary<string, (DateTimeOffset Until, int Streak)> _bans = new();
    readonly Func<CancellationToken, Task<IReadOnlyList<string>>>? _discover;
    readonly LocalFingerprints _fingerprints;
    IAsyncDisposable? _owned;

    RemotePool(ModelConfig config, RemoteOptions options, LocalFingerprints fingerprints,
        Func<CancellationToken, Task<IReadOnlyList<string>>>? discover)
    {
        Config = config;
        Options = options;
        _fingerprints = fingerprints;
        _discover = discover;
    }

    public ModelConfig Config { get; }
    public RemoteOptions Options { get; }
    public IReadOnlyList<ServerConnection> Servers => _servers.Values.OrderBy(s => s.Address, StringComparer.Ordinal).ToList();

    public ServerConnection Get(string address) => _servers[address];

    /// <summary>Failures inside autograd backward nodes, which cannot throw (see RemoteSequential.Backward).</summary>
    public ConcurrentQueue<Exception> BackwardErrors { get; } = new();

    /// <summary>
    /// Connects to every reachable address; unreachable ones are skipped (a swarm always has some dead entries)
    /// unless none answers. <paramref name="discover"/> lists current server addresses when a chain can't be found.
    /// </summary>
    public static async Task<RemotePool> ConnectAsync(ModelConfig config, IEnumerable<string> peers, RemoteOptions options,
        Checkpoint? local, CancellationToken ct, Func<CancellationToken, Task<IReadOnlyList<string>>>? discover = null)
    {
        var addresses = peers.Select(p => p.Trim()).Where(p => p.Length > 0).Distinct().ToList();
        if (addresses.Count == 0) throw new ArgumentException("no peers given");
        var pool = new RemotePool(config, options, new LocalFingerprints(options.VerifyWeights ? local : null), discover);
        var errors = await pool.AddAsync(addresses, ct).ConfigureAwait(false);
        if (pool._servers.IsEmpty)
        {
            pool.Dispose();
            throw errors.Count == 1 ? errors[0] : new AggregateException("no server could be reached", errors);
        }
        return pool;
    }

    async Task<List<Exception>> AddAsync(IEnumerable<string> addresses, CancellationToken ct)
    {
        var errors = new List<Exception>();
        var tasks = addresses.Where(a => !_servers.ContainsKey(a))
            .Select(a => ServerConnection.ConnectAsync(a, Config, Options, ct)).ToList();
        foreach (var task in tasks)
        {
            try
            {
                var server = await task.ConfigureAwait(false);
                try { server.VerifyWeights(_fingerprints.Get); }
                catch
                {
                    server.Dispose();
                    throw;
                }
                if (!_servers.TryAdd(server.Address, server)) server.Dispose();
            }
            catch (Exception e) when (e is not OperationCanceledException || !ct.IsCancellationRequested)
            {
                errors.Add(e);
            }
        }
        return errors;
    }

    /// <summary>Bans a failed server for 15 s, doubling with every consecutive failure (capped at 5 min).</summary>
    public void Ban(string address)
    {
        var now = DateTimeOffset.UtcNow;
        _bans.AddOrUpdate(address, _ => (now + Options.BanTime, 1), (_, b) =>
        {
            var streak = b.Streak + 1;
            var seconds = Math.Min(Options.BanTime.TotalSeconds * Math.Pow(2, streak - 1), 300);
            return (now + TimeSpan.FromSeconds(seconds), streak);
        });
    }

    /// <summary>A server that answered ends its failure streak.</summary>
    public void Success(string address) => _bans.TryRemove(address, out _);

    public bool IsBanned(string address) => _bans.TryGetValue(address, out var b) && b.Until > DateTimeOffset.UtcNow;

    /// <summary>
    /// A chain over <c>[start, end)</c> avoiding banned servers; asks the DHT for more servers when the known ones
    /// cannot cover the range. Bans are ignored only where every holder of a block is banned (as Petals does).
    /// </summary>
    public async Task<IReadOnlyList<ChainHop>> PlanAsync(int start, int end, CancellationToken ct)
    {
        if (TryPlan(start, end, ignoreBans: false) is { } chain) return chain;
        if (_discover is not null)
        {
            await AddAsync(await _discover(ct).ConfigureAwait(false), ct).ConfigureAwait(false);
            if (TryPlan(start, end, ignoreBans: false) is { } found) return found;
        }
        return TryPlan(start, end, ignoreBans: true)
               ?? throw new SwarmException($"no server holds all of blocks [{start}, {end}) any more (known: {string.Join(" ", _servers.Values.Select(s => s.Span))})");
    }

    /// <summary>The chain that would be planned now, without discovery (synchronous, for opening sessions).</summary>
    public IReadOnlyList<ChainHop> Plan(int start, int end) =>
        TryPlan(start, end, ignoreBans: false) ?? TryPlan(start, end, ignoreBans: true)
        ?? throw new SwarmException($"no server holds all of blocks [{start}, {end}) (known: {string.Join(" ", _servers.Values.Select(s => s.Span))})");

    IReadOnlyList<ChainHop>? TryPlan(int start, int end, bool ignoreBans)
    {
        var spans = _servers.Values.Where(s => ignoreBans || !IsBanned(s.Address)).Select(s => s.Span)
            .OrderBy(s => s.Address, StringComparer.Ordinal).ToList();
        try { return ChainPlanner.FewestHops(spans, start, end); }
        catch (SwarmException) { return null; }
    }

    /// <summary>Something whose life ends with the pool (the client's DHT node).</summary>
    public void Own(IAsyncDisposable resource) => _owned = resource;

    public void Dispose()
    {
        foreach (var s in _servers.Values) s.Dispose();
        _servers.Clear();
        _owned?.DisposeAsync().AsTask().GetAwaiter().GetResult();
    }
}
