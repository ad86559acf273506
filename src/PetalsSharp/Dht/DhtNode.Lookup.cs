using System.Collections.Concurrent;
using Grpc.Core;

namespace PetalsSharp.Dht;

// Routing-table upkeep and iterative lookups.
public sealed partial class DhtNode
{
    // Background pings in flight: verifying unknown callers, and testing the oldest contact of a full bucket.
    readonly ConcurrentDictionary<NodeId, byte> _verifying = new();
    readonly ConcurrentDictionary<NodeId, byte> _evicting = new();
    const int MaxPendingVerifications = 64;

    /// <summary>The result of an iterative lookup: the k closest nodes that answered, and any entries they returned.</summary>
    internal sealed record LookupResult(List<Contact> Closest, List<SignedEntry> Entries);

    internal V1.Contact SelfContact() => _selfContact;

    internal List<Contact> ClosestContacts(NodeId target) => _table.FindClosest(target, _options.K);

    internal List<SignedEntry> LocalEntries(string key) => _store.Get(key, DateTimeOffset.UtcNow);

    internal string? StoreReplica(SignedEntry entry) => _store.Put(entry, DateTimeOffset.UtcNow);

    /// <summary>
    /// A request arrived from <paramref name="sender"/>. A known contact at the same address is refreshed; anyone
    /// else is added only after we dial its announced address and it signs our nonce, so a caller can neither
    /// claim someone else's id nor plant an unreachable address.
    /// </summary>
    internal void OnRequestFrom(V1.Contact? sender)
    {
        var c = DhtWire.ParseContact(sender, requireAddress: true);
        if (c is null || c.Id == Id || _stopping.IsCancellationRequested) return;
        var known = _table.Find(c.Id);
        if (known is not null && known.Address == c.Address)
        {
            Seen(known);
            return;
        }
        if (_verifying.Count >= MaxPendingVerifications || !_verifying.TryAdd(c.Id, 0)) return;
        _ = Task.Run(async () =>
        {
            try { Seen(await _rpc.PingAsync(c.Address, c.Id, _stopping.Token).ConfigureAwait(false)); }
            catch (Exception e) when (IsPeerFailure(e)) { }
            finally { _verifying.TryRemove(c.Id, out _); }
        });
    }

    /// <summary>A verified contact answered: refresh or add it; for a full bucket, ping the oldest and evict it only if dead.</summary>
    void Seen(Contact contact)
    {
        _timeouts.TryRemove(contact.Id, out _);
        var outcome = _table.Update(contact, DateTimeOffset.UtcNow, out var oldest);
        if (outcome == UpdateOutcome.Added) HandOff(contact);
        if (outcome != UpdateOutcome.BucketFull || oldest is null) return;
        if (_stopping.IsCancellationRequested || !_evicting.TryAdd(oldest.Id, 0)) return;
        _ = Task.Run(async () =>
        {
            try
            {
                await _rpc.PingAsync(oldest.Address, oldest.Id, _stopping.Token).ConfigureAwait(false);
                _table.Update(oldest, DateTimeOffset.UtcNow, out _);
            }
            catch (Exception e) when (IsPeerFailure(e))
            {
                if (_table.Replace(oldest, contact, DateTimeOffset.UtcNow)) HandOff(contact);
            }
            finally { _evicting.TryRemove(oldest.Id, out _); }
        });
    }

    // Consecutive timeouts per contact: a busy peer that misses one deadline is not dropped at once.
    readonly ConcurrentDictionary<NodeId, int> _timeouts = new();
    const int TimeoutsBeforeEviction = 3;

    /// <summary>
    /// A contact failed a call. Refused connections and misbehaviour evict it at once; timeouts only after a few in
    /// a row, so an overloaded swarm does not empty its own routing tables.
    /// </summary>
    void Failed(NodeId id, Exception e)
    {
        if (_timeouts.Count > 4096) _timeouts.Clear();   // ids tried once and never again must not pile up
        bool timeout = e is RpcException { StatusCode: StatusCode.DeadlineExceeded } || e is OperationCanceledException;
        if (timeout && _timeouts.AddOrUpdate(id, 1, (_, n) => n + 1) < TimeoutsBeforeEviction) return;
        _timeouts.TryRemove(id, out _);
        _table.Remove(id);
    }

    /// <summary>Errors that mean "this peer is dead or misbehaving" rather than "we are shutting down".</summary>
    bool IsPeerFailure(Exception e) => e is RpcException or DhtException or HttpRequestException or IOException
        || (e is OperationCanceledException && !_stopping.IsCancellationRequested);

    sealed record QueryResult(Contact Peer, bool Ok, List<Contact> Nodes, List<SignedEntry> Entries);

    async Task<QueryResult> QueryAsync(Contact peer, NodeId target, string? key, CancellationToken ct)
    {
        try
        {
            if (key is null)
            {
                var (responder, nodes) = await _rpc.FindNodeAsync(peer, target, ct).ConfigureAwait(false);
                Seen(responder);
                return new(peer, true, nodes, []);
            }
            var (r, n, entries) = await _rpc.FindValueAsync(peer, key, ct).ConfigureAwait(false);
            Seen(r);
            return new(peer, true, n, entries);
        }
        catch (Exception e) when (IsPeerFailure(e) && !ct.IsCancellationRequested)
        {
            Failed(peer.Id, e);
            return new(peer, false, [], []);
        }
        catch (RpcException) when (ct.IsCancellationRequested)
        {
            throw new OperationCanceledException(ct);
        }
    }

    /// <summary>
    /// Iterative lookup: keep up to α queries in flight to the closest candidates not yet asked, learning closer
    /// nodes from each reply, until the k closest candidates that are still alive have all answered. Dead or
    /// misbehaving peers are dropped from the candidates (and the routing table). With a key, every answering node
    /// is asked for its entries too (a full traversal, so the freshest entries are found, as Petals' latest=True).
    /// </summary>
    internal async Task<LookupResult> LookupAsync(NodeId target, string? key, CancellationToken ct)
    {
        int k = _options.K;
        var candidates = new Dictionary<NodeId, Contact>();
        foreach (var c in _table.FindClosest(target, k)) candidates[c.Id] = c;
        var answered = new HashSet<NodeId>();
        var failed = new HashSet<NodeId>();
        var inFlight = new Dictionary<Task<QueryResult>, NodeId>();
        var entries = new List<SignedEntry>();
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(ct, _stopping.Token);
        while (true)
        {
            var best = candidates.Values.Where(c => !failed.Contains(c.Id)).OrderBy(c => c.Id.Xor(target)).Take(k);
            foreach (var c in best)
            {
                if (inFlight.Count >= _options.Alpha) break;
                if (answered.Contains(c.Id) || inFlight.ContainsValue(c.Id)) continue;
                inFlight[QueryAsync(c, target, key, linked.Token)] = c.Id;
            }
            if (inFlight.Count == 0) break;
            var done = await Task.WhenAny(inFlight.Keys).ConfigureAwait(false);
            inFlight.Remove(done);
            var result = await done.ConfigureAwait(false);
            if (!result.Ok)
            {
                failed.Add(result.Peer.Id);
                continue;
            }
            answered.Add(result.Peer.Id);
            entries.AddRange(result.Entries);
            foreach (var n in result.Nodes)
                if (n.Id != Id && !failed.Contains(n.Id)) candidates.TryAdd(n.Id, n);
        }
        var closest = candidates.Values.Where(c => answered.Contains(c.Id)).OrderBy(c => c.Id.Xor(target)).Take(k).ToList();
        return new LookupResult(closest, entries);
    }

    /// <summary>Stores <paramref name="entry"/> on the k closest nodes to its key, this node included if it is one of them.</summary>
    async Task<int> PublishAsync(SignedEntry entry, CancellationToken ct)
    {
        var keyId = NodeId.ForKey(entry.Key);
        var lookup = await LookupAsync(keyId, null, ct).ConfigureAwait(false);
        var closest = lookup.Closest;
        // A node that is not served (client mode: created, never started) keeps nothing: nobody could ask it.
        bool selfAmong = Address.Length > 0 && (closest.Count < _options.K || keyId.CompareDistance(Id, closest[^1].Id) < 0);
        int accepted = 0;
        if (selfAmong && _store.Put(entry, DateTimeOffset.UtcNow) is null) accepted++;
        var targets = closest.Take(selfAmong ? _options.K - 1 : _options.K);
        var results = await Task.WhenAll(targets.Select(async peer =>
        {
            try { return await _rpc.StoreAsync(peer, [entry], ct).ConfigureAwait(false); }
            catch (Exception e) when (IsPeerFailure(e) && !ct.IsCancellationRequested)
            {
                Failed(peer.Id, e);
                return 0;
            }
        })).ConfigureAwait(false);
        return accepted + results.Sum();
    }
}
