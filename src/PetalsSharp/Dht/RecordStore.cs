namespace PetalsSharp.Dht;

/// <summary>
/// The records one node holds for the swarm, under limits on subkeys per key and total bytes. Every entry is checked
/// before it is kept (see <see cref="DhtRecords.Check"/>); per subkey the latest expiration wins. Thread-safe.
/// </summary>
/// <remarks>
/// Each owner identity (a subkey is its node id) may hold at most <paramref name="maxEntriesPerOwner"/> entries here:
/// a peer that floods stores under one identity is refused past it, while everyone else is still stored.
/// </remarks>
public sealed class RecordStore(int maxSubkeysPerKey, long maxBytes, TimeSpan maxTtl, int maxEntriesPerOwner = int.MaxValue)
{
    readonly Dictionary<string, Dictionary<string, SignedEntry>> _records = new(StringComparer.Ordinal);
    readonly Dictionary<string, int> _perOwner = new(StringComparer.Ordinal);
    // When each key was last stored here or replicated from here (unix ms): replication skips keys that another
    // holder pushed recently, so one holder per key does the work each period instead of all k.
    readonly Dictionary<string, long> _lastPushed = new(StringComparer.Ordinal);
    readonly Lock _lock = new();
    long _bytes;

    /// <summary>Bytes held, as counted by <see cref="SignedEntry.Size"/>.</summary>
    public long Bytes { get { lock (_lock) return _bytes; } }

    /// <summary>Keys with at least one entry.</summary>
    public int KeyCount { get { lock (_lock) return _records.Count; } }

    /// <summary>Stores <paramref name="entry"/> if it checks out; returns null when accepted or the reason it was refused.</summary>
    public string? Put(SignedEntry entry, DateTimeOffset now) => Put(entry, now, verify: true);

    /// <summary>Test hook: stores without any check, to play a malicious node that serves forged entries.</summary>
    internal void PutUnverified(SignedEntry entry) => Put(entry, DateTimeOffset.UnixEpoch, verify: false);

    string? Put(SignedEntry entry, DateTimeOffset now, bool verify)
    {
        SignedEntry? existing;
        lock (_lock)
        {
            existing = _records.TryGetValue(entry.Key, out var subs) && subs.TryGetValue(entry.Subkey, out var e) ? e : null;
            // A replica seen again is the common case of replication: identical bytes need no signature check.
            if (existing is not null && existing.SameAs(entry))
            {
                _lastPushed[entry.Key] = now.ToUnixTimeMilliseconds();
                return null;
            }
            if (existing is not null && existing.ExpirationUnixMs >= entry.ExpirationUnixMs && verify)
                return "a later entry for this subkey is already stored";
        }
        // Verify outside the lock: it is the expensive part and needs no shared state.
        if (verify && DhtRecords.Check(entry, now, maxTtl) is { } error) return error;
        lock (_lock)
        {
            if (!_records.TryGetValue(entry.Key, out var subs)) subs = new(StringComparer.Ordinal);
            subs.TryGetValue(entry.Subkey, out existing);
            if (verify && existing is not null && existing.ExpirationUnixMs >= entry.ExpirationUnixMs)
                return "a later entry for this subkey is already stored";
            if (existing is null && subs.Count >= maxSubkeysPerKey) return $"key already has {maxSubkeysPerKey} subkeys";
            int owned = _perOwner.GetValueOrDefault(entry.Subkey);
            if (existing is null && owned >= maxEntriesPerOwner)
                return $"quota: identity {entry.Subkey[..Math.Min(16, entry.Subkey.Length)]}… already stores {maxEntriesPerOwner} entries on this node";
            long delta = entry.Size - (existing?.Size ?? 0);
            if (_bytes + delta > maxBytes) return "node storage is full";
            if (existing is null) _perOwner[entry.Subkey] = owned + 1;
            subs[entry.Subkey] = entry;
            _records[entry.Key] = subs;
            _lastPushed[entry.Key] = now.ToUnixTimeMilliseconds();
            _bytes += delta;
            return null;
        }
    }

    /// <summary>The unexpired entries of a key, latest expiration first.</summary>
    public List<SignedEntry> Get(string key, DateTimeOffset now)
    {
        long nowMs = now.ToUnixTimeMilliseconds();
        lock (_lock)
        {
            if (!_records.TryGetValue(key, out var subs)) return [];
            return subs.Values.Where(e => e.ExpirationUnixMs > nowMs).OrderByDescending(e => e.ExpirationUnixMs).ToList();
        }
    }

    /// <summary>Every unexpired entry, grouped by key.</summary>
    public List<(string Key, List<SignedEntry> Entries)> Snapshot(DateTimeOffset now)
    {
        long nowMs = now.ToUnixTimeMilliseconds();
        lock (_lock)
            return _records.Select(kv => (kv.Key, kv.Value.Values.Where(e => e.ExpirationUnixMs > nowMs).ToList()))
                .Where(kv => kv.Item2.Count > 0).ToList();
    }

    /// <summary>
    /// Unexpired entries grouped by key, of the keys nobody stored here or replicated from here since
    /// <paramref name="quietSince"/>; marks them as replicated now (the caller is about to push them).
    /// </summary>
    public List<(string Key, List<SignedEntry> Entries)> TakeForReplication(DateTimeOffset now, DateTimeOffset quietSince)
    {
        long nowMs = now.ToUnixTimeMilliseconds(), quietMs = quietSince.ToUnixTimeMilliseconds();
        lock (_lock)
        {
            var result = new List<(string, List<SignedEntry>)>();
            foreach (var (key, subs) in _records)
            {
                if (_lastPushed.TryGetValue(key, out long last) && last > quietMs) continue;
                var live = subs.Values.Where(e => e.ExpirationUnixMs > nowMs).ToList();
                if (live.Count == 0) continue;
                _lastPushed[key] = nowMs;
                result.Add((key, live));
            }
            return result;
        }
    }

    /// <summary>Test hook: forgets everything, as a node restarted without its records would.</summary>
    internal void Clear()
    {
        lock (_lock)
        {
            _records.Clear();
            _lastPushed.Clear();
            _perOwner.Clear();
            _bytes = 0;
        }
    }

    /// <summary>Drops expired entries and empty keys; returns how many entries went.</summary>
    public int Purge(DateTimeOffset now)
    {
        long nowMs = now.ToUnixTimeMilliseconds();
        int removed = 0;
        lock (_lock)
        {
            foreach (var (key, subs) in _records.ToList())
            {
                foreach (var (subkey, e) in subs.ToList())
                {
                    if (e.ExpirationUnixMs > nowMs) continue;
                    subs.Remove(subkey);
                    _bytes -= e.Size;
                    if (--OwnedCount(subkey) <= 0) _perOwner.Remove(subkey);
                    removed++;
                }
                if (subs.Count > 0) continue;
                _records.Remove(key);
                _lastPushed.Remove(key);
            }
        }
        return removed;
    }

    ref int OwnedCount(string owner) =>
        ref System.Runtime.InteropServices.CollectionsMarshal.GetValueRefOrAddDefault(_perOwner, owner, out _);
}
