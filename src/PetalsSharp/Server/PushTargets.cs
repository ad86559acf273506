using PetalsSharp.Swarm;
using PetalsSharp.Wire.V1;

namespace PetalsSharp.Server;

/// <summary>
/// Where this server may push a step's output. A client names the next server in the step, so without a check
/// any client could make the server dial any address (and keep a channel to it); the server instead pushes only
/// to servers the DHT announces ONLINE for the block right after the session's span, or that its operator listed
/// (<see cref="ServerOptions.PushPeers"/>). Deciding never dials the candidate.
/// </summary>
internal sealed class PushTargets(BlockServer server)
{
    /// <summary>How long a read of the DHT is trusted; a server that just joined waits at most this for pushes.</summary>
    static readonly TimeSpan Fresh = TimeSpan.FromSeconds(30);

    /// <summary>A miss re-reads the DHT at most this often, so unknown addresses cannot turn into a lookup each.</summary>
    static readonly TimeSpan MinReread = TimeSpan.FromSeconds(5);

    readonly SemaphoreSlim _reading = new(1, 1);
    readonly Dictionary<int, (HashSet<string> Addresses, long ReadAt)> _announced = [];

    /// <summary>Null when <paramref name="address"/> may receive the output of a session ending at block <paramref name="end"/>; else why not.</summary>
    public async Task<string?> RefusalAsync(string address, int end, CancellationToken ct)
    {
        if (IsSelf(address)) return $"{address} is this server";
        if (Listed(address)) return null;
        if (server.Dht is null) return $"{address} is not in this server's --push-peers (a server without a DHT pushes only there)";
        var (known, readAt) = Cached(end);
        if (known?.Contains(address) == true)
        {
            // Announced a moment ago: push now, and confirm it in the background rather than on this step's time.
            if (Age(readAt) >= Fresh) Prefetch(end);
            return null;
        }
        if (known is null || Age(readAt) >= MinReread)
        {
            try { known = await ReadAsync(end, ct); }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                return $"the DHT did not answer in time to confirm {address}";
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                // A DHT failure costs this step its push, never the session.
                return $"could not read the DHT to confirm {address}: {e.Message}";
            }
        }
        return known?.Contains(address) == true ? null : $"{address} is not announced in the DHT for block {end}";
    }

    /// <summary>Reads who serves block <paramref name="end"/> in the background, unless known recently.</summary>
    public void Prefetch(int end)
    {
        if (server.Dht is null || end >= server.Config.NumLayers) return;
        var (known, readAt) = Cached(end);
        if (known is not null && Age(readAt) < MinReread) return;
        _ = Task.Run(async () =>
        {
            try { await ReadAsync(end, server.Stopping); }
            catch (Exception) { /* the next push reads again */ }
        });
    }

    /// <summary>One DHT read at a time; a read that another caller has just done is reused.</summary>
    async Task<HashSet<string>?> ReadAsync(int end, CancellationToken ct)
    {
        await _reading.WaitAsync(ct);
        try
        {
            var (known, readAt) = Cached(end);
            if (known is not null && Age(readAt) < MinReread) return known;
            if (server.Dht is not { } dht) return null;
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            timeout.CancelAfter(TimeSpan.FromSeconds(5));
            var servers = await SwarmReader.ReadBlockAsync(dht, server.Options.ResolvedDhtPrefix, server.Config.NumLayers, end, timeout.Token);
            known = servers.Where(s => s.State == ServerState.Online).Select(s => s.Address).ToHashSet(StringComparer.OrdinalIgnoreCase);
            lock (_announced) _announced[end] = (known, Environment.TickCount64);
            return known;
        }
        finally { _reading.Release(); }
    }

    (HashSet<string>? Addresses, long ReadAt) Cached(int end)
    {
        lock (_announced) return _announced.TryGetValue(end, out var entry) ? entry : (null, 0);
    }

    static TimeSpan Age(long readAt) => TimeSpan.FromMilliseconds(Environment.TickCount64 - readAt);

    bool IsSelf(string address) =>
        string.Equals(address, server.Address, StringComparison.OrdinalIgnoreCase)
        || string.Equals(address, server.PublicAddress, StringComparison.OrdinalIgnoreCase);

    bool Listed(string address)
    {
        int colon = address.LastIndexOf(':');
        var host = colon > 0 ? address[..colon] : address;
        return server.Options.PushPeers.Any(p => string.Equals(p, address, StringComparison.OrdinalIgnoreCase)
                                                 || (IsHostOnly(p) && string.Equals(p, host, StringComparison.OrdinalIgnoreCase)));
    }

    static bool IsHostOnly(string peer) => !peer.Contains(':') || (peer.StartsWith('[') && peer.EndsWith(']'));
}
