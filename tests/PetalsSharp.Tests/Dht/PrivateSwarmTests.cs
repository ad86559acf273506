using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using PetalsSharp.Dht;
using PetalsSharp.Dht.V1;
using Xunit;

namespace PetalsSharp.Tests.Dht;

/// <summary>With a swarm key, members form a DHT and outsiders (wrong key or none) can neither join nor store.</summary>
[Collection(DhtSocketsCollection.Name)]
public sealed class PrivateSwarmTests
{
    [Fact]
    public async Task OnlyMembersJoinStoreAndRead()
    {
        var key = SwarmKey.Generate();
        await using var swarm = new DhtTestSwarm();
        for (int i = 0; i < 4; i++) await swarm.AddAsync(DhtTestSwarm.Options(key));
        Assert.Equal(4, await swarm.Nodes[1].StoreAsync("private.0", "x"u8.ToArray(), DateTimeOffset.UtcNow.AddMinutes(1)));
        Assert.Single(await swarm.Nodes[3].GetAsync("private.0"));

        await using var wrongKey = await DhtNode.StartAsync(DhtTestSwarm.Options(SwarmKey.Generate()));
        await using var noKey = await DhtNode.StartAsync(DhtTestSwarm.Options());
        foreach (var outsider in new[] { wrongKey, noKey })
        {
            var e = await Assert.ThrowsAsync<DhtException>(() => outsider.BootstrapAsync([swarm.Nodes[0].PeerAddress]));
            Assert.Contains("PermissionDenied", e.Message);
            // Its store reaches nobody but itself, and members never see it.
            Assert.Equal(1, await outsider.StoreAsync("private.1", "evil"u8.ToArray(), DateTimeOffset.UtcNow.AddMinutes(1)));
        }
        Assert.Empty(await swarm.Nodes[2].GetAsync("private.1"));
        // A member that dials an outsider does not take its answers: the outsider cannot prove the key.
        await Assert.ThrowsAsync<DhtException>(() => swarm.Nodes[2].BootstrapAsync([noKey.PeerAddress]));
        await Task.Delay(300);   // let any background verification finish
        var outsiders = new[] { wrongKey.Id, noKey.Id };
        Assert.All(swarm.Nodes, n => Assert.DoesNotContain(n.Table.All(), c => outsiders.Contains(c.Id)));
        Assert.All(swarm.Nodes, n => Assert.Empty(n.Records.Get("private.1", DateTimeOffset.UtcNow)));
    }

    [Fact]
    public async Task RawCallsWithoutAValidProofGetPermissionDenied()
    {
        var key = SwarmKey.Generate();
        await using var node = await DhtNode.StartAsync(DhtTestSwarm.Options(key));
        using var channel = TestChannels.Create(node.Address);
        var ping = new PingRequest { Nonce = ByteString.CopyFrom(RandomNumberGenerator.GetBytes(16)) };

        var plain = new DhtService.DhtServiceClient(channel);
        var denied = await Assert.ThrowsAsync<RpcException>(() => plain.PingAsync(ping).ResponseAsync);
        Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);

        var wrong = new DhtService.DhtServiceClient(SwarmAuth.Apply(channel, SwarmKey.Generate()));
        denied = await Assert.ThrowsAsync<RpcException>(() => wrong.PingAsync(ping).ResponseAsync);
        Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);

        var stale = new Metadata { { SwarmAuth.RequestHeader, key.CreateRequestProof("/petals.dht.v1.DhtService/Ping", DateTimeOffset.UtcNow.AddMinutes(-10)) } };
        denied = await Assert.ThrowsAsync<RpcException>(() => plain.PingAsync(ping, stale).ResponseAsync);
        Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);

        var member = new DhtService.DhtServiceClient(SwarmAuth.Apply(channel, key));
        var reply = await member.PingAsync(ping);
        Assert.Equal(node.Id.ToBytes(), reply.Responder.NodeId.ToByteArray());
    }
}
