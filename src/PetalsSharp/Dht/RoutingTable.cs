namespace PetalsSharp.Dht;

/// <summary>A peer as the routing table knows it: its id, the public key the id derives from, and "host:port".</summary>
public sealed record Contact(NodeId Id, byte[] PublicKey, string Address)
{
    public override string ToString() => $"{Address}/{Id}";
}

/// <summary>What <see cref="RoutingTable.Update"/> did with a contact.</summary>
public enum UpdateOutcome
{
    /// <summary>New contact appended to a bucket with room.</summary>
    Added,
    /// <summary>Already known: moved to the most-recently-seen end.</summary>
    Refreshed,
    /// <summary>The bucket is full: ping its least-recently-seen contact and call <see cref="RoutingTable.Replace"/> if it is dead.</summary>
    BucketFull,
    /// <summary>Our own id: never stored.</summary>
    Self,
}

/// <summary>
/// Kademlia k-buckets: bucket i holds up to k contacts whose distance from us has its highest bit at i, ordered
/// least- to most-recently seen. A full bucket never drops a live old contact for a new one (old nodes are the
/// likelier to stay up, and this resists flooding); the caller pings the oldest first. Thread-safe.
/// </summary>
public sealed class RoutingTable
{
    readonly List<Contact>[] _buckets;
    readonly DateTimeOffset[] _lastChanged;
    readonly Lock _lock = new();

    /// <summary>A table around <paramref name="self"/> with buckets of <paramref name="k"/>.</summary>
    public RoutingTable(NodeId self, int k, DateTimeOffset now)
    {
        if (k < 1) throw new ArgumentOutOfRangeException(nameof(k));
        Self = self;
        K = k;
        _buckets = Enumerable.Range(0, NodeId.Bits).Select(_ => new List<Contact>()).ToArray();
        _lastChanged = Enumerable.Repeat(now, NodeId.Bits).ToArray();
    }

    /// <summary>The id the distances are measured from.</summary>
    public NodeId Self { get; }

    /// <summary>Bucket size.</summary>
    public int K { get; }

    /// <summary>Contacts in all buckets.</summary>
    public int Count { get { lock (_lock) return _buckets.Sum(b => b.Count); } }

    /// <summary>
    /// Records that <paramref name="contact"/> answered (or was verified): refresh it, append it, or report the full
    /// bucket's oldest contact in <paramref name="oldest"/> for the caller to ping.
    /// </summary>
    public UpdateOutcome Update(Contact contact, DateTimeOffset now, out Contact? oldest)
    {
        oldest = null;
        int index = Self.BucketIndex(contact.Id);
        if (index < 0) return UpdateOutcome.Self;
        lock (_lock)
        {
            var bucket = _buckets[index];
            _lastChanged[index] = now;
            int at = bucket.FindIndex(c => c.Id == contact.Id);
            if (at >= 0)
            {
                bucket.RemoveAt(at);
                bucket.Add(contact);
                return UpdateOutcome.Refreshed;
            }
            if (bucket.Count < K)
            {
                bucket.Add(contact);
                return UpdateOutcome.Added;
            }
            oldest = bucket[0];
            return UpdateOutcome.BucketFull;
        }
    }

    /// <summary>Evicts the dead <paramref name="stale"/> contact in favour of <paramref name="fresh"/> (same bucket) if it is still there.</summary>
    public bool Replace(Contact stale, Contact fresh, DateTimeOffset now)
    {
        int index = Self.BucketIndex(stale.Id);
        if (index < 0 || index != Self.BucketIndex(fresh.Id)) return false;
        lock (_lock)
        {
            var bucket = _buckets[index];
            if (bucket.Any(c => c.Id == fresh.Id)) return false;
            int at = bucket.FindIndex(c => c.Id == stale.Id);
            if (at < 0)
            {
                if (bucket.Count >= K) return false;
            }
            else bucket.RemoveAt(at);
            bucket.Add(fresh);
            _lastChanged[index] = now;
            return true;
        }
    }

    /// <summary>Forgets a contact (it failed to answer).</summary>
    public bool Remove(NodeId id)
    {
        int index = Self.BucketIndex(id);
        if (index < 0) return false;
        lock (_lock) return _buckets[index].RemoveAll(c => c.Id == id) > 0;
    }

    /// <summary>The contact with this id, if known.</summary>
    public Contact? Find(NodeId id)
    {
        int index = Self.BucketIndex(id);
        if (index < 0) return null;
        lock (_lock) return _buckets[index].Find(c => c.Id == id);
    }

    /// <summary>Up to <paramref name="count"/> known contacts closest to <paramref name="target"/>, closest first.</summary>
    public List<Contact> FindClosest(NodeId target, int count)
    {
        lock (_lock)
            return _buckets.SelectMany(b => b).OrderBy(c => c.Id.Xor(target)).Take(count).ToList();
    }

    /// <summary>All contacts (diagnostics, tests).</summary>
    public List<Contact> All()
    {
        lock (_lock) return _buckets.SelectMany(b => b).ToList();
    }

    /// <summary>The bucket holding this id, or -1 for our own.</summary>
    public int BucketOf(NodeId id) => Self.BucketIndex(id);

    /// <summary>Contacts in bucket <paramref name="index"/>, least-recently seen first.</summary>
    public List<Contact> Bucket(int index)
    {
        lock (_lock) return [.. _buckets[index]];
    }

    /// <summary>
    /// Buckets not touched since <paramref name="staleAfter"/> ago, from the nearest non-empty one outward: a lookup
    /// of a random id in each keeps far regions of the table current. Buckets nearer than any contact stay empty
    /// however often they are refreshed, so they are skipped.
    /// </summary>
    public List<int> StaleBuckets(DateTimeOffset now, TimeSpan staleAfter)
    {
        lock (_lock)
        {
            int nearest = Array.FindIndex(_buckets, b => b.Count > 0);
            if (nearest < 0) return [];
            return Enumerable.Range(nearest, NodeId.Bits - nearest).Where(i => now - _lastChanged[i] >= staleAfter).ToList();
        }
    }

    /// <summary>Marks a bucket as refreshed (a lookup into it was just made).</summary>
    public void Touch(int index, DateTimeOffset now)
    {
        lock (_lock) _lastChanged[index] = now;
    }
}
