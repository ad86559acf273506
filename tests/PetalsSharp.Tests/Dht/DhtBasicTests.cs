using System.Text;
using PetalsSharp.Dht;
using Xunit;

namespace PetalsSharp.Tests.Dht;

[Collection(DhtSocketsCollection.Name)]
public sealed class DhtBasicTests
{
    [Fact]
    public async Task StoreThenGetFromAnotherNode()
    {
        await using var swarm = new DhtTestSwarm();
        for (int i = 0; i < 5; i++) await swarm.AddAsync();
        await swarm.WaitForFullMeshAsync();
        var value = Encoding.UTF8.GetBytes("blocks 0..4");
        int accepted = await swarm.Nodes[3].StoreAsync("llama-gqa.3", value, DateTimeOffset.UtcNow.AddMinutes(1));
        Assert.Equal(5, accepted);
        var entries = await swarm.Nodes[1].GetAsync("llama-gqa.3");
        var entry = Assert.Single(entries);
        Assert.Equal(swarm.Nodes[3].Id.ToString(), entry.Subkey);
        Assert.Equal(value, entry.Value);
        Assert.Empty(await swarm.Nodes[2].GetAsync("llama-gqa.4"));
    }

    [Fact]
    public async Task LatestExpirationWinsPerSubkeyAndOwnersAreSeparate()
    {
        await using var swarm = new DhtTestSwarm();
        for (int i = 0; i < 4; i++) await swarm.AddAsync();
        var now = DateTimeOffset.UtcNow;
        await swarm.Nodes[0].StoreAsync("m.1", "late"u8.ToArray(), now.AddMinutes(2));
        await swarm.Nodes[0].StoreAsync("m.1", "early"u8.ToArray(), now.AddMinutes(1));   // older: refused by holders
        await swarm.Nodes[1].StoreAsync("m.1", "other"u8.ToArray(), now.AddMinutes(1));
        var entries = await swarm.Nodes[3].GetAsync("m.1");
        Assert.Equal(2, entries.Count);
        Assert.Equal("late", Encoding.UTF8.GetString(entries.Single(e => e.Subkey == swarm.Nodes[0].Id.ToString()).Value));
        Assert.Equal("other", Encoding.UTF8.GetString(entries.Single(e => e.Subkey == swarm.Nodes[1].Id.ToString()).Value));
        var many = await swarm.Nodes[2].GetManyAsync(["m.1", "m.2"]);
        Assert.Equal(2, many["m.1"].Count);
        Assert.Empty(many["m.2"]);
    }

    [Fact]
    public async Task ClientModeNodeReadsAndWritesWithoutJoiningTables()
    {
        await using var swarm = new DhtTestSwarm();
        for (int i = 0; i < 3; i++) await swarm.AddAsync();
        await using var client = DhtNode.Create(DhtTestSwarm.Options());
        await client.BootstrapAsync([swarm.Nodes[1].Address]);
        Assert.Equal(3, await client.StoreAsync("client.0", "c"u8.ToArray(), DateTimeOffset.UtcNow.AddMinutes(1)));
        Assert.Single(await client.GetAsync("client.0"));
        Assert.Equal(0, client.Records.KeyCount);
        await Task.Delay(200);
        Assert.All(swarm.Nodes, n => Assert.Null(n.Table.Find(client.Id)));
    }

    [Fact]
    public async Task ANodeThatLostEveryContactRejoinsThroughItsInitialPeers()
    {
        await using var swarm = new DhtTestSwarm();
        var options = DhtTestSwarm.Options() with { RefreshPeriod = TimeSpan.FromSeconds(1) };
        var first = await swarm.AddAsync(options);
        var second = await swarm.AddAsync(options);
        foreach (var c in second.Table.All()) second.Table.Remove(c.Id);
        foreach (var c in first.Table.All()) first.Table.Remove(c.Id);
        await Task.Delay(TimeSpan.FromSeconds(1.5));
        Assert.NotNull(second.Table.Find(first.Id));
    }

    [Fact]
    public async Task ExpiredRecordsDisappearAndArePurged()
    {
        await using var swarm = new DhtTestSwarm();
        for (int i = 0; i < 4; i++) await swarm.AddAsync();
        await swarm.Nodes[0].StoreAsync("short.0", "x"u8.ToArray(), DateTimeOffset.UtcNow.AddSeconds(1.5));
        Assert.Single(await swarm.Nodes[2].GetAsync("short.0"));
        Assert.All(swarm.Nodes, n => Assert.Equal(1, n.Records.KeyCount));
        await Task.Delay(TimeSpan.FromSeconds(2.5));
        Assert.Empty(await swarm.Nodes[2].GetAsync("short.0"));
        Assert.All(swarm.Nodes, n => Assert.Equal(0, n.Records.KeyCount));
        Assert.All(swarm.Nodes, n => Assert.Equal(0, n.Records.Bytes));
    }
}
