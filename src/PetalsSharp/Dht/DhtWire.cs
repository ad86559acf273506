using System.Text;
using Google.Protobuf;
using PetalsSharp.Wire;

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
/// The channels of every DHT node of the process: tests run dozens of nodes in one process, and sharing keeps it to
/// one connection per peer. Shorter timeouts than block servers': a DHT call that waits long is better sent elsewhere.
/// </summary>
static class DhtChannels
{
    public static readonly PeerChannels Shared = new(new PeerChannelOptions(DhtLimits.MaxMessageBytes)
    {
        ConnectTimeout = TimeSpan.FromSeconds(3),
        MaxReconnectBackoff = TimeSpan.FromSeconds(2),
        PooledConnectionIdleTimeout = TimeSpan.FromMinutes(2),
        MultipleHttp2Connections = false,
    });
}
