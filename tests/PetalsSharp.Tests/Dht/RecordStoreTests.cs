using PetalsSharp.Dht;
using Xunit;

namespace PetalsSharp.Tests.Dht;

public sealed class RecordStoreTests
{
    static readonly TimeSpan Ttl = TimeSpan.FromHours(1);

    [Fact]
    public void LatestExpirationWinsAndBytesAreAccounted()
    {
        using var owner = NodeIdentity.CreateEphemeral();
        var now = DateTimeOffset.UtcNow;
        var store = new RecordStore(maxSubkeysPerKey: 10, maxBytes: 1 << 20, Ttl);
        var first = DhtRecords.Sign(owner, "k", "one"u8, now.AddMinutes(1));
        var later = DhtRecords.Sign(owner, "k", "two"u8, now.AddMinutes(2));
        Assert.Null(store.Put(first, now));
        Assert.Null(store.Put(first, now));   // the same replica again
        Assert.Null(store.Put(later, now));
        Assert.NotNull(store.Put(first, now));   // older than what is stored
        Assert.Equal("two"u8.ToArray(), Assert.Single(store.Get("k", now)).Value);
        Assert.Equal(later.Size, store.Bytes);
        Assert.Empty(store.Get("k", now.AddMinutes(3)));
        Assert.Equal(1, store.Purge(now.AddMinutes(3)));
        Assert.Equal(0, store.Bytes);
        Assert.Equal(0, store.KeyCount);
    }

    [Fact]
    public void LimitsOnSubkeysAndBytes()
    {
        var now = DateTimeOffset.UtcNow;
        var owners = Enumerable.Range(0, 3).Select(_ => NodeIdentity.CreateEphemeral()).ToList();
        var store = new RecordStore(maxSubkeysPerKey: 2, maxBytes: 1 << 20, Ttl);
        Assert.Null(store.Put(DhtRecords.Sign(owners[0], "k", "a"u8, now.AddMinutes(1)), now));
        Assert.Null(store.Put(DhtRecords.Sign(owners[1], "k", "a"u8, now.AddMinutes(1)), now));
        Assert.Contains("subkeys", store.Put(DhtRecords.Sign(owners[2], "k", "a"u8, now.AddMinutes(1)), now));
        Assert.Null(store.Put(DhtRecords.Sign(owners[2], "other", "a"u8, now.AddMinutes(1)), now));

        var small = new RecordStore(maxSubkeysPerKey: 10, maxBytes: 1000, Ttl);
        Assert.Contains("full", small.Put(DhtRecords.Sign(owners[0], "k", new byte[2000], now.AddMinutes(1)), now));
        owners.ForEach(o => o.Dispose());
    }

    [Fact]
    public void SignaturesBindEveryFieldAndReadersTakeTheLatestValidEntry()
    {
        using var owner = NodeIdentity.CreateEphemeral();
        var now = DateTimeOffset.UtcNow;
        Assert.NotEqual(DhtRecords.CanonicalBytes("ab", "c", [], 1), DhtRecords.CanonicalBytes("a", "bc", [], 1));
        var entry = DhtRecords.Sign(owner, "k", "v"u8, now.AddMinutes(1));
        Assert.Null(DhtRecords.Check(entry, now, Ttl));
        Assert.NotNull(DhtRecords.Check(entry with { Key = "k2" }, now, Ttl));
        Assert.NotNull(DhtRecords.Check(entry with { ExpirationUnixMs = entry.ExpirationUnixMs + 1 }, now, Ttl));
        Assert.NotNull(DhtRecords.Check(entry with { Subkey = entry.Subkey.ToUpperInvariant() }, now, Ttl));
        Assert.NotNull(DhtRecords.Check(entry with { PublicKey = [1, 2, 3] }, now, Ttl));

        var forgedLater = DhtRecords.Sign(owner, "k", "new"u8, now.AddMinutes(5)) with { Value = "evil"u8.ToArray() };
        var merged = DhtRecords.MergeVerified("k", [entry, forgedLater, entry], now);
        Assert.Equal("v"u8.ToArray(), Assert.Single(merged).Value);
        Assert.Empty(DhtRecords.MergeVerified("k", [entry], now.AddMinutes(2)));
    }
}
