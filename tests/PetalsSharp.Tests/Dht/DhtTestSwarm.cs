using PetalsSharp.Dht;
using Xunit;

namespace PetalsSharp.Tests.Dht;

/// <summary>DHT tests that open sockets run one class at a time: dozens of nodes on 2 cores need the whole machine.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class DhtSocketsCollection
{
    public const string Name = "Dht sockets";
}

/// <summary>Nodes on 127.0.0.1 with ephemeral ports and fast upkeep, all stopped on dispose.</summary>
public sealed class DhtTestSwarm : IAsyncDisposable
{
    public List<DhtNode> Nodes { get; } = [];

    public static DhtNodeOptions Options(SwarmKey? key = null) => new()
    {
        Host = "127.0.0.1",
        Port = 0,
        SwarmKey = key,
        // Generous: a node on a busy 2-core machine can take seconds to answer, and dead nodes fail at once anyway
        // (their port is closed), so only a hung peer ever waits this long.
        RpcTimeout = TimeSpan.FromSeconds(6),
        RepublishPeriod = TimeSpan.FromSeconds(30),
        ReplicatePeriod = TimeSpan.FromSeconds(2),
        RefreshPeriod = TimeSpan.FromSeconds(30),
        PurgePeriod = TimeSpan.FromMilliseconds(250),
    };

    public async Task<DhtNode> AddAsync(DhtNodeOptions? options = null, IEnumerable<string>? peers = null)
    {
        var node = await DhtNode.StartAsync(options ?? Options());
        Nodes.Add(node);
        await node.BootstrapAsync(peers ?? (Nodes.Count > 1 ? [Nodes[0].PeerAddress] : []));
        // The bootstrap node adds a caller only after dialing it back (so nobody plants an address), which happens
        // after the join returns: wait for it, or a store made right away can miss the newcomer on a busy machine.
        if (peers is null && Nodes.Count > 1)
        {
            var deadline = DateTime.UtcNow.AddSeconds(60);
            while (!Nodes[0].ClosestContacts(node.Id).Any(c => c.Id == node.Id) && DateTime.UtcNow < deadline)
                await Task.Delay(10);
        }
        return node;
    }

    /// <summary>
    /// Waits until every node has every other in its routing table. A newcomer is added by the nodes its join
    /// contacted only after they dial it back, so on a busy machine a store right after the joins may reach a node
    /// that does not know the last one yet (and count one replica short).
    /// </summary>
    public async Task WaitForFullMeshAsync()
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (!Nodes.All(n => Nodes.All(m => m == n || n.ClosestContacts(m.Id).Any(c => c.Id == m.Id))) && DateTime.UtcNow < deadline)
            await Task.Delay(10);
    }

    public async Task StopAsync(DhtNode node)
    {
        lock (Nodes) Nodes.Remove(node);
        await node.DisposeAsync();
    }

    public async ValueTask DisposeAsync()
    {
        await Task.WhenAll(Nodes.Select(n => n.DisposeAsync().AsTask()));
        Nodes.Clear();
    }
}
