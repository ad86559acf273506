using PetalsSharp.Dht;
using Xunit;

namespace PetalsSharp.Tests.Dht;

public sealed class NodeIdAndRoutingTests
{
    static readonly DateTimeOffset T0 = DateTimeOffset.UnixEpoch.AddDays(20000);

    static NodeId Flip(NodeId id, int bit)
    {
        var bytes = id.ToBytes();
        bytes[NodeId.Length - 1 - bit / 8] ^= (byte)(1 << (bit % 8));
        return NodeId.FromBytes(bytes);
    }

    static Contact C(NodeId id, int port = 1) => new(id, [1, 2, 3], $"127.0.0.1:{port}");

    [Fact]
    public void XorDistanceAndBucketIndex()
    {
        var a = NodeId.Random();
        Assert.Equal(-1, a.BucketIndex(a));
        Assert.Equal(0, a.BucketIndex(Flip(a, 0)));
        Assert.Equal(159, a.BucketIndex(Flip(a, 159)));
        Assert.Equal(77, a.BucketIndex(Flip(Flip(a, 77), 3)));
        var b = NodeId.Random();
        Assert.Equal(a.Xor(b), b.Xor(a));
        Assert.Equal(a, a.Xor(b).Xor(b));
        Assert.True(a.CompareDistance(Flip(a, 3), Flip(a, 90)) < 0);
        Assert.Equal(a.BucketIndex(b), a.BucketIndex(a.Xor(a).Xor(b)));
        for (int bucket = 0; bucket < NodeId.Bits; bucket += 7)
            Assert.Equal(bucket, a.BucketIndex(NodeId.RandomInBucket(a, bucket)));
    }

    [Fact]
    public void IdsRoundTripAndDeriveFromKeys()
    {
        var a = NodeId.Random();
        Assert.Equal(a, NodeId.Parse(a.ToString()));
        Assert.Equal(a, NodeId.Parse(a.ToString().ToUpperInvariant()));
        Assert.Equal(a, NodeId.FromBytes(a.ToBytes()));
        Assert.False(NodeId.TryParse("abc", out _));
        Assert.False(NodeId.TryParse(new string('g', 40), out _));
        using var identity = NodeIdentity.CreateEphemeral();
        Assert.Equal(identity.Id, NodeId.FromPublicKey(identity.PublicKey));
        Assert.Equal(NodeId.ForKey("llama.3"), NodeId.ForKey("llama.3"));
        Assert.NotEqual(NodeId.ForKey("llama.3"), NodeId.ForKey("llama.4"));
    }

    [Fact]
    public void FullBucketKeepsOldContactsUntilTheyAreFoundDead()
    {
        var self = NodeId.Random();
        var table = new RoutingTable(self, k: 2, T0);
        var c1 = C(NodeId.RandomInBucket(self, 159), 1);
        var c2 = C(NodeId.RandomInBucket(self, 159), 2);
        var c3 = C(NodeId.RandomInBucket(self, 159), 3);
        Assert.Equal(UpdateOutcome.Added, table.Update(c1, T0, out _));
        Assert.Equal(UpdateOutcome.Added, table.Update(c2, T0, out _));
        Assert.Equal(UpdateOutcome.BucketFull, table.Update(c3, T0, out var oldest));
        Assert.Equal(c1.Id, oldest!.Id);
        // c1 answered the ping: it becomes the most recently seen, c3 is not added.
        Assert.Equal(UpdateOutcome.Refreshed, table.Update(c1, T0, out _));
        Assert.Equal([c2.Id, c1.Id], table.Bucket(159).Select(c => c.Id));
        Assert.Equal(UpdateOutcome.BucketFull, table.Update(c3, T0, out oldest));
        Assert.Equal(c2.Id, oldest!.Id);
        // c2 did not answer: evicted for c3.
        Assert.True(table.Replace(c2, c3, T0));
        Assert.Equal([c1.Id, c3.Id], table.Bucket(159).Select(c => c.Id));
        Assert.Equal(UpdateOutcome.Self, table.Update(C(self), T0, out _));
        Assert.True(table.Remove(c1.Id));
        Assert.Null(table.Find(c1.Id));
        Assert.Equal(UpdateOutcome.Added, table.Update(C(NodeId.RandomInBucket(self, 10)), T0, out _));
        Assert.Equal(2, table.Count);
    }

    [Fact]
    public void ClosestAreOrderedByXorDistanceAndStaleBucketsAreReported()
    {
        var self = NodeId.Random();
        var table = new RoutingTable(self, k: 20, T0);
        var contacts = Enumerable.Range(0, 60).Select(i => C(NodeId.Random(), i + 1)).ToList();
        foreach (var c in contacts) table.Update(c, T0, out _);
        var target = NodeId.Random();
        var expected = contacts.Where(c => table.Find(c.Id) is not null).OrderBy(c => c.Id.Xor(target)).Take(5).Select(c => c.Id);
        Assert.Equal(expected, table.FindClosest(target, 5).Select(c => c.Id));
        int nearest = table.All().Min(c => self.BucketIndex(c.Id));
        var stale = table.StaleBuckets(T0.AddMinutes(20), TimeSpan.FromMinutes(15));
        Assert.Equal(NodeId.Bits - nearest, stale.Count);
        table.Touch(159, T0.AddMinutes(20));
        Assert.DoesNotContain(159, table.StaleBuckets(T0.AddMinutes(20), TimeSpan.FromMinutes(15)));
    }

    [Theory]
    [InlineData("127.0.0.1:31337", true, false)]
    [InlineData("example.org:1/0123456789abcdef0123456789abcdef01234567", true, true)]
    [InlineData("[::1]:8080", true, false)]
    [InlineData("127.0.0.1", false, false)]
    [InlineData("127.0.0.1:0", false, false)]
    [InlineData("127.0.0.1:99999", false, false)]
    [InlineData("127.0.0.1:80/nothex", false, false)]
    [InlineData("::1:80", false, false)]
    public void PeerAddresses(string text, bool ok, bool hasId)
    {
        Assert.Equal(ok, DhtAddress.TryParse(text, out _, out var id));
        Assert.Equal(hasId, id is not null);
    }
}
