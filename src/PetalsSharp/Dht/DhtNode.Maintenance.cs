using Microsoft.Extensions.Logging;

namespace PetalsSharp.Dht;

// Background upkeep: republishing owned records, re-replicating held replicas, refreshing buckets.
public sealed partial class DhtNode
{
    const int MaxRefreshesPerRound = 4;
    const long MaxStoreBatchBytes = 4 * 1024 * 1024;
    // Hand-offs run in the background; a burst of joins must not become a burst of uploads.
    readonly SemaphoreSlim _handOffGate = new(2);

    async Task LoopAsync(string name, TimeSpan period, Func<CancellationToken, Task> work, CancellationToken ct)
    {
        using var timer = new PeriodicTimer(period);
        try
        {
            while (await timer.WaitForNextTickAsync(ct).ConfigureAwait(false))
            {
                // One failed round (a lookup that found nobody, say) must not end upkeep for good. Calls cut short by
                // shutdown surface as RpcException(Cancelled), not as OperationCanceledException.
                try { await work(ct).ConfigureAwait(false); }
                catch (Exception e) when (!ct.IsCancellationRequested) { _log.LogWarning(e, "DHT {Task} round failed", name); }
                catch (Exception) { return; }
            }
        }
        catch (OperationCanceledException) { }
    }

    /// <summary>Re-stores every unexpired record this node owns on the current k closest nodes.</summary>
    async Task RepublishAsync(CancellationToken ct)
    {
        long nowMs = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        foreach (var owned in _owned.Where(kv => kv.Value.ExpirationUnixMs <= nowMs).ToList()) _owned.TryRemove(owned);
        // A server announces every block it serves (a hundred keys): a few lookups at a time, not one by one.
        await Parallel.ForEachAsync(_owned.Values.ToList(), new ParallelOptions { MaxDegreeOfParallelism = 4, CancellationToken = ct },
            async (entry, token) => await PublishAsync(entry, token).ConfigureAwait(false)).ConfigureAwait(false);
    }

    /// <summary>
    /// Pushes the replicas this node holds to the k nodes closest to their keys that the routing table knows, batched
    /// per peer. No lookups: the table is most accurate around our own id, where our replicas live. Keys that another
    /// holder pushed here during the last period are skipped (Kademlia's optimization), and peers that already hold
    /// an entry accept it again without re-verifying it, so a quiet swarm costs little.
    /// </summary>
    async Task ReplicateAsync(CancellationToken ct)
    {
        var batches = new Dictionary<NodeId, (Contact Peer, List<SignedEntry> Entries)>();
        var now = DateTimeOffset.UtcNow;
        // Slightly less than a period, so a key pushed by a peer in the previous round is not pushed again at once.
        foreach (var (key, entries) in _store.TakeForReplication(now, now - _options.ReplicatePeriod * 0.9))
        {
            foreach (var peer in _table.FindClosest(NodeId.ForKey(key), _options.K))
            {
                if (!batches.TryGetValue(peer.Id, out var batch)) batches[peer.Id] = batch = (peer, []);
                batch.Entries.AddRange(entries);
            }
        }
        await Parallel.ForEachAsync(batches.Values, new ParallelOptions { MaxDegreeOfParallelism = 4, CancellationToken = ct }, async (batch, token) =>
        {
            foreach (var chunk in Chunks(batch.Entries))
            {
                try { await _rpc.StoreAsync(batch.Peer, chunk, token).ConfigureAwait(false); }
                catch (Exception e) when (IsPeerFailure(e) && !token.IsCancellationRequested)
                {
                    Failed(batch.Peer.Id, e);
                    return;
                }
            }
        }).ConfigureAwait(false);
    }

    static IEnumerable<List<SignedEntry>> Chunks(List<SignedEntry> entries)
    {
        var chunk = new List<SignedEntry>();
        long bytes = 0;
        foreach (var e in entries)
        {
            if (chunk.Count == DhtLimits.MaxRecordsPerStore || (chunk.Count > 0 && bytes + e.Size > MaxStoreBatchBytes))
            {
                yield return chunk;
                chunk = [];
                bytes = 0;
            }
            chunk.Add(e);
            bytes += e.Size;
        }
        if (chunk.Count > 0) yield return chunk;
    }

    /// <summary>
    /// Kademlia's hand-off: a node just added to the table gets the replicas of every key it is now among the k
    /// closest to (as far as this table knows). Without it, a holder that skips replication because a peer pushed
    /// recently could leave a newcomer near a key empty-handed until that peer happens to learn of it.
    /// </summary>
    void HandOff(Contact newcomer)
    {
        if (_stopping.IsCancellationRequested || _store.KeyCount == 0) return;
        _ = Task.Run(async () =>
        {
            var ct = _stopping.Token;
            try
            {
                await _handOffGate.WaitAsync(ct).ConfigureAwait(false);
                try
                {
                    var entries = _store.Snapshot(DateTimeOffset.UtcNow)
                        .Where(kv => _table.FindClosest(NodeId.ForKey(kv.Key), _options.K).Any(c => c.Id == newcomer.Id))
                        .SelectMany(kv => kv.Entries).ToList();
                    foreach (var chunk in Chunks(entries)) await _rpc.StoreAsync(newcomer, chunk, ct).ConfigureAwait(false);
                }
                finally { _handOffGate.Release(); }
            }
            catch (Exception e) when (IsPeerFailure(e) || e is OperationCanceledException) { }
        });
    }

    /// <summary>
    /// Looks up a random id in a few buckets nobody has touched for RefreshPeriod, to keep the far table current;
    /// rejoins through the initial peers when the table is empty.
    /// </summary>
    async Task RefreshAsync(CancellationToken ct)
    {
        // A node that lost every contact (a network outage, all its peers restarted) would otherwise stay alone
        // until someone happens to call it: join again through the initial peers. One attempt: this loop is the retry.
        if (_table.Count == 0 && _initialPeers.Length > 0)
        {
            await JoinAsync(_initialPeers, TimeSpan.Zero, ct).ConfigureAwait(false);
            return;
        }
        var now = DateTimeOffset.UtcNow;
        foreach (var bucket in _table.StaleBuckets(now, _options.RefreshPeriod).Take(MaxRefreshesPerRound))
        {
            _table.Touch(bucket, now);
            await LookupAsync(NodeId.RandomInBucket(Id, bucket), null, ct).ConfigureAwait(false);
        }
    }
}
