using System.Collections.Concurrent;
using System.Text;
using Google.Protobuf;
using Grpc.Net.Client;

namespace PetalsSharp.Dht;

/// <summary>Conversions between wire messages and checked values; everything from the wire passes through here.</summary>
static class DhtWire
{
    static readonly byte[] ReplyDomain = "petals-dht-reply-v1\0"u8.ToArray();

    /// <summary>
    /// A contact from the wire, or null when anything is off: id not 20 bytes, id != hash(public key), oversized
    /// key, or (when required) a missing or malformed address.
    /// </summary>
    public static Contact? ParseContact(V1.Contact? c, bool requireAddress)
    {
        if (c is null || c.NodeId.Length != NodeId.Length || c.PublicKey.Length is 0 or > DhtLimits.MaxPublicKeyBytes) return null;
        var id = NodeId.FromBytes(c.NodeId.Span);
        if (NodeId.FromPublicKey(c.PublicKey.Span) != id) return null;
        var address = c.Address ?? "";
        if (address.Length > 0 && !DhtAddress.TryParse(address, out _, out _)) return null;
        if (address.Contains('/')) return null;
        if (requireAddress && address.Length == 0) return null;
        return new Contact(id, c.PublicKey.ToByteArray(), address);
    }

    public static V1.Contact ToWire(Contact c) => new()
    {
        NodeId = ByteString.CopyFrom(c.Id.ToBytes()),
        PublicKey = ByteString.CopyFrom(c.PublicKey),
        Address = c.Address,
    };

    /// <summary>What a responder signs: the method, the requester's nonce and its own id.</summary>
    public static byte[] ReplyBytes(string method, ReadOnlySpan<byte> nonce, NodeId responder)
    {
        var m = Encoding.ASCII.GetBytes(method);
        var buffer = new byte[ReplyDomain.Length + m.Length + 1 + nonce.Length + NodeId.Length];
        ReplyDomain.CopyTo(buffer, 0);
        m.CopyTo(buffer, ReplyDomain.Length);
        nonce.CopyTo(buffer.AsSpan(ReplyDomain.Length + m.Length + 1));
        responder.ToBytes().CopyTo(buffer, buffer.Length - NodeId.Length);
        return buffer;
    }

    public static bool NonceOk(ByteString nonce) => nonce.Length is >= DhtLimits.MinNonceBytes and <= DhtLimits.MaxNonceBytes;
}

/// <summary>
/// One HTTP/2 channel per peer address, shared by every node of the process (tests run dozens of nodes in one
/// process; sharing keeps it to one connection per peer). Authentication is per call, so sharing is safe. Peers
/// come and go (and replies may name addresses that never answer), so channels idle for a while are dropped once
/// the cache grows large.
/// </summary>
static class DhtChannels
{
    const int SweepAbove = 1024;
    static readonly TimeSpan IdleAfter = TimeSpan.FromMinutes(5);
    static readonly ConcurrentDictionary<string, (GrpcChannel Channel, long LastUsedTicks)> Channels = new(StringComparer.OrdinalIgnoreCase);

    public static GrpcChannel Get(string address)
    {
        long now = Environment.TickCount64;
        var entry = Channels.AddOrUpdate(address, a => (Create(a), now), (_, e) => (e.Channel, now));
        if (Channels.Count > SweepAbove) Sweep(now);
        return entry.Channel;
    }

    static void Sweep(long now)
    {
        foreach (var (address, entry) in Channels)
        {
            if (now - entry.LastUsedTicks < IdleAfter.TotalMilliseconds || !Channels.TryRemove(new(address, entry))) continue;
            // Calls have 2 s deadlines: disposing a little later cannot cut one short.
            _ = Task.Delay(TimeSpan.FromSeconds(30)).ContinueWith(_ => entry.Channel.Dispose(), TaskScheduler.Default);
        }
    }

    // Same settings as Client/ServerConnection.CreateChannel: large messages both ways, fast first reconnects
    // (the default backoff makes the first call after a peer starts wait about a second).
    static GrpcChannel Create(string address) => GrpcChannel.ForAddress("http://" + address, new GrpcChannelOptions
    {
        MaxReceiveMessageSize = DhtLimits.MaxMessageBytes,
        MaxSendMessageSize = DhtLimits.MaxMessageBytes,
        InitialReconnectBackoff = TimeSpan.FromMilliseconds(50),
        MaxReconnectBackoff = TimeSpan.FromSeconds(2),
        HttpHandler = new SocketsHttpHandler
        {
            ConnectTimeout = TimeSpan.FromSeconds(3),
            PooledConnectionIdleTimeout = TimeSpan.FromMinutes(2),
            KeepAlivePingDelay = TimeSpan.FromSeconds(30),
            KeepAlivePingTimeout = TimeSpan.FromSeconds(20),
        },
    });
}
