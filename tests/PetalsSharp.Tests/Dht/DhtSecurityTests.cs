using System.Security.Cryptography;
using System.Text;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using PetalsSharp.Dht;
using PetalsSharp.Dht.V1;
using Xunit;
using Record = PetalsSharp.Dht.V1.Record;

namespace PetalsSharp.Tests.Dht;

/// <summary>Forged records sent by raw gRPC are refused, and readers drop bad entries a malicious node serves.</summary>
[Collection(DhtSocketsCollection.Name)]
public sealed class DhtSecurityTests
{
    static ByteString Nonce() => ByteString.CopyFrom(RandomNumberGenerator.GetBytes(16));

    static Record Wire(SignedEntry e) => new() { Key = e.Key, Entry = e.ToWire() };

    /// <summary>An entry signed by <paramref name="signer"/> but claiming <paramref name="subkeyOwner"/>'s subkey and public key.</summary>
    static SignedEntry Forge(NodeIdentity signer, NodeIdentity subkeyOwner, string key, byte[] value, DateTimeOffset expiration, bool ownerKey)
    {
        var subkey = subkeyOwner.Id.ToString();
        long ms = expiration.ToUnixTimeMilliseconds();
        var signature = signer.Sign(DhtRecords.CanonicalBytes(key, subkey, value, ms));
        return new SignedEntry(key, subkey, value, ms, ownerKey ? subkeyOwner.PublicKey : signer.PublicKey, signature);
    }

    [Fact]
    public async Task ForgedStoresAreRefused()
    {
        await using var node = await DhtNode.StartAsync(DhtTestSwarm.Options());
        using var channel = TestChannels.Create(node.Address);
        var client = new DhtService.DhtServiceClient(channel);
        using var attacker = NodeIdentity.CreateEphemeral();
        using var victim = NodeIdentity.CreateEphemeral();
        var now = DateTimeOffset.UtcNow;
        var good = DhtRecords.Sign(attacker, "m.0", "mine"u8, now.AddMinutes(5));
        var tampered = DhtRecords.Sign(attacker, "m.5", "mine"u8, now.AddMinutes(5)) with { Value = "evil"u8.ToArray() };
        var othersSubkey = Forge(attacker, victim, "m.0", "evil"u8.ToArray(), now.AddMinutes(5), ownerKey: false);
        var othersKeyBadSig = Forge(attacker, victim, "m.0", "evil"u8.ToArray(), now.AddMinutes(5), ownerKey: true);
        var tooFar = DhtRecords.Sign(attacker, "m.1", "x"u8, now.AddHours(2));
        var expired = DhtRecords.Sign(attacker, "m.2", "x"u8, now.AddSeconds(-1));
        var oversized = DhtRecords.Sign(attacker, "m.3", new byte[DhtLimits.MaxValueBytes + 1], now.AddMinutes(5));
        var movedKey = good with { Key = "m.9" };   // a valid signature over another key
        var request = new StoreRequest { Nonce = Nonce() };
        request.Records.AddRange(new[] { good, tampered, othersSubkey, othersKeyBadSig, tooFar, expired, oversized, movedKey }.Select(Wire));
        request.Records.Add(new Record { Key = "m.4" });
        var reply = await client.StoreAsync(request);
        Assert.Equal(
            [true, false, false, false, false, false, false, false, false],
            reply.Statuses.Select(s => s.Accepted));
        Assert.Contains("signature", reply.Statuses[1].Reason);
        Assert.Contains("subkey", reply.Statuses[2].Reason);
        Assert.Contains("signature", reply.Statuses[3].Reason);
        Assert.Contains("ahead", reply.Statuses[4].Reason);
        Assert.Contains("expired", reply.Statuses[5].Reason);
        Assert.Contains("exceeds", reply.Statuses[6].Reason);
        Assert.Equal(1, node.Records.KeyCount);
        var stored = Assert.Single(node.Records.Get("m.0", DateTimeOffset.UtcNow));
        Assert.Equal("mine", Encoding.UTF8.GetString(stored.Value));

        // Malformed requests as a whole: no nonce, too many records, a bad key or target.
        var noNonce = await Assert.ThrowsAsync<RpcException>(() => client.PingAsync(new PingRequest()).ResponseAsync);
        Assert.Equal(StatusCode.InvalidArgument, noNonce.StatusCode);
        var tooMany = new StoreRequest { Nonce = Nonce() };
        tooMany.Records.AddRange(Enumerable.Repeat(Wire(good), DhtLimits.MaxRecordsPerStore + 1));
        Assert.Equal(StatusCode.InvalidArgument, (await Assert.ThrowsAsync<RpcException>(() => client.StoreAsync(tooMany).ResponseAsync)).StatusCode);
        var badKey = new FindValueRequest { Nonce = Nonce(), Key = new string('k', DhtLimits.MaxKeyBytes + 1) };
        Assert.Equal(StatusCode.InvalidArgument, (await Assert.ThrowsAsync<RpcException>(() => client.FindValueAsync(badKey).ResponseAsync)).StatusCode);
        var badTarget = new FindNodeRequest { Nonce = Nonce(), Target = ByteString.CopyFrom(new byte[5]) };
        Assert.Equal(StatusCode.InvalidArgument, (await Assert.ThrowsAsync<RpcException>(() => client.FindNodeAsync(badTarget).ResponseAsync)).StatusCode);
    }

    [Fact]
    public async Task ReadersIgnoreBadEntriesFromAMaliciousNode()
    {
        await using var swarm = new DhtTestSwarm();
        for (int i = 0; i < 4; i++) await swarm.AddAsync();
        var owner = swarm.Nodes[1];
        var evil = swarm.Nodes[2];
        await owner.StoreAsync("m.7", "honest"u8.ToArray(), DateTimeOffset.UtcNow.AddMinutes(1));
        using var attacker = NodeIdentity.CreateEphemeral();
        var later = DateTimeOffset.UtcNow.AddMinutes(30);
        // The malicious node serves: the owner's subkey with another value (bad signature, later expiration),
        // the owner's subkey signed by the attacker with the attacker's key, and a garbage signature of its own.
        evil.Records.PutUnverified(Forge(attacker, owner.Identity, "m.7", "evil"u8.ToArray(), later, ownerKey: true));
        var own = DhtRecords.Sign(attacker, "m.7", "evil"u8, later);
        evil.Records.PutUnverified(own with { Signature = new byte[64] });
        var reader = swarm.Nodes[3];
        var entries = await reader.GetAsync("m.7");
        var entry = Assert.Single(entries);
        Assert.Equal(owner.Id.ToString(), entry.Subkey);
        Assert.Equal("honest", Encoding.UTF8.GetString(entry.Value));
    }

    [Fact]
    public async Task APeerThatIsNotTheExpectedIdIsRefused()
    {
        await using var swarm = new DhtTestSwarm();
        var a = await swarm.AddAsync();
        await using var b = await DhtNode.StartAsync(DhtTestSwarm.Options());
        var wrong = NodeId.Random();
        var e = await Assert.ThrowsAsync<DhtException>(() => b.BootstrapAsync([$"{a.Address}/{wrong}"]));
        Assert.Contains("not the expected", e.Message);
        // b may still learn a under its real id (a calls back to verify b, and b verifies a in turn), never under the claimed one.
        Assert.Null(b.Table.Find(wrong));
        Assert.All(b.Table.All(), c => Assert.Equal(a.Id, c.Id));
    }
}
