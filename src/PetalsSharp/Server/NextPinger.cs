using System.Diagnostics;
using PetalsSharp.Dht;
using PetalsSharp.Swarm;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;

namespace PetalsSharp.Server;

/// <summary>
/// Measures round trips to the servers that could follow this one in a chain (those holding the block right after
/// its span), so clients can weigh server-to-server hops (Petals' next_pings). Kept as a moving average by
/// address, which is how clients know servers.
/// </summary>
internal sealed class NextPinger(ServerOptions options, PeerChannels peers)
{
    readonly Lock _lock = new();
    RttEstimator _rtts = RttEstimator.Empty;

    /// <summary>Pings every ONLINE server whose span holds block <paramref name="end"/>; returns address → seconds.</summary>
    public async Task<IReadOnlyDictionary<string, double>> MeasureAsync(DhtNode dht, int numBlocks, int end, string self, CancellationToken ct)
    {
        if (end >= numBlocks) return new Dictionary<string, double>();   // the last span has no next server
        var snapshot = await SwarmReader.ReadAsync(dht, options.ResolvedDhtPrefix, numBlocks, ct);
        var next = snapshot.Online.Where(s => s.Start <= end && end < s.End && s.Address != self).DistinctBy(s => s.Address).Take(8);
        await Task.WhenAll(next.Select(async server =>
        {
            var address = server.Address;
            var client = new BlockService.BlockServiceClient(SwarmAuth.Apply(peers.Get(server.Dial(options.Tls)), options.SwarmKey));
            var sw = Stopwatch.StartNew();
            try
            {
                await client.InfoAsync(new InfoRequest(), deadline: DateTime.UtcNow.AddSeconds(2), cancellationToken: ct);
                lock (_lock) _rtts = _rtts.Observe(address, sw.Elapsed.TotalSeconds, DateTimeOffset.UtcNow);
            }
            catch (Exception) when (!ct.IsCancellationRequested)
            {
                lock (_lock) _rtts = _rtts.ObserveFailure(address, DateTimeOffset.UtcNow);
            }
        }));
        lock (_lock) return _rtts.Snapshot(DateTimeOffset.UtcNow);
    }
}
