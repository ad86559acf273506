using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using PetalsSharp.Dht;
using PetalsSharp.Dht.V1;
using Xunit;

namespace PetalsSharp.Tests.Dht;

/// <summary>
/// DHT quotas: an identity that floods stores is refused past its quota while other identities are stored, and an
/// address that floods requests is refused past its rate (RESOURCE_EXHAUSTED, saying why) while another address is
/// served. Loopback is exempt from the rate by default, so these nodes turn that off; the second address is
/// 127.0.0.2, which Linux routes over loopback like 127.0.0.1.
/// </summary>
[Collection(DhtSocketsCollection.Name)]
public sealed class DhtQuotaTests
{
    static ByteString Nonce() => ByteString.CopyFrom(RandomNumberGenerator.GetBytes(16));

    [Fact]
    public void An_identity_past_its_entry_quota_is_refused_and_others_are_stored()
    {
        var store = new RecordStore(1000, 1 << 20, TimeSpan.FromHours(1), maxEntriesPerOwner: 3);
        using var flooder = NodeIdentity.CreateEphemeral();
        using var honest = NodeIdentity.CreateEphemeral();
        var now = DateTimeOffset.UtcNow;
        for (int i = 0; i < 3; i++) Assert.Null(store.Put(DhtRecords.Sign(flooder, $"k.{i}", "v"u8, now.AddSeconds(30)), now));
        var refused = store.Put(DhtRecords.Sign(flooder, "k.3", "v"u8, now.AddMinutes(5)), now);
        Assert.Contains("quota", refused);
        // A later entry under a key the identity holds already replaces it: no new entry, no quota used.
        Assert.Null(store.Put(DhtRecords.Sign(flooder, "k.0", "w"u8, now.AddMinutes(5)), now));
        Assert.Null(store.Put(DhtRecords.Sign(honest, "k.3", "v"u8, now.AddMinutes(5)), now));
        // Once its entries expire, the identity may store again.
        Assert.Equal(2, store.Purge(now.AddMinutes(1)));
        Assert.Null(store.Put(DhtRecords.Sign(flooder, "k.4", "v"u8, now.AddMinutes(5)), now));
    }

    [Fact]
    public async Task An_address_flooding_requests_is_refused_while_another_is_served()
    {
        // Half a request per second refills: only a flood slower than one call per 2 s (never, even on a loaded box) stays under it.
        var options = DhtTestSwarm.Options() with { RequestsPerSecondPerAddress = 0.5, RequestBurstPerAddress = 10, QuotaExemptsLoopback = false };
        await using var node = await DhtNode.StartAsync(options);
        using var flooder = Channel(node.Address, IPAddress.Loopback);
        var client = new DhtService.DhtServiceClient(flooder);
        int served = 0;
        RpcException? refusal = null;
        for (int i = 0; i < 500 && refusal is null; i++)
        {
            try
            {
                await client.FindNodeAsync(new FindNodeRequest { Nonce = Nonce(), Target = ByteString.CopyFrom(new byte[NodeId.Length]) });
                served++;
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.ResourceExhausted)
            {
                refusal = e;
            }
        }
        Assert.NotNull(refusal);
        Assert.Contains("DHT request quota exceeded for 127.0.0.1", refusal.Status.Detail);
        Assert.True(served >= 10, $"only {served} requests were served before the refusal: the burst is 10");

        using var other = Channel(node.Address, IPAddress.Parse("127.0.0.2"));
        var reply = await new DhtService.DhtServiceClient(other).PingAsync(new PingRequest { Nonce = Nonce() });
        Assert.NotNull(reply.Responder);
    }

    [Theory]
    [InlineData("ipv4:10.1.2.3:5000", "10.1.2.3")]
    [InlineData("ipv6:[2001:db8::1]:443", "2001:db8::1")]
    [InlineData("ipv6:[::ffff:10.1.2.3]:443", "10.1.2.3")]
    [InlineData("unix:/tmp/x", null)]
    [InlineData(null, null)]
    public void Peer_strings_name_their_address(string? peer, string? address) => Assert.Equal(address, RequestQuota.AddressOf(peer));

    /// <summary>A gRPC channel whose connections leave from <paramref name="source"/>.</summary>
    static GrpcChannel Channel(string address, IPAddress source) => TestChannels.Create(address, source);
}
