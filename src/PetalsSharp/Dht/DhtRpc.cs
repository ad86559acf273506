using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Core;
using PetalsSharp.Dht.V1;
using PetalsSharp.Wire;

namespace PetalsSharp.Dht;

/// <summary>
/// The calling side of the protocol for one node: fresh nonce per request, deadline per call, and a check that every
/// reply is signed by the node id it claims (and, when the caller knows it, by the id it expected).
/// </summary>
sealed class DhtRpc(NodeIdentity identity, Func<V1.Contact> self, SwarmKey? swarmKey, TimeSpan timeout, bool tls)
{
    // A known id pins the TLS certificate too, so what a signed reply proves holds for the whole link.
    DhtService.DhtServiceClient Client(string address, NodeId? expected) =>
        new(SwarmAuth.Apply(DhtChannels.Shared.Get(PeerTarget.Dial(address, tls, expected?.ToString())), swarmKey));

    static ByteString Nonce() => ByteString.CopyFrom(RandomNumberGenerator.GetBytes(16));

    CallOptions Options(CancellationToken ct, TimeSpan? deadline = null) =>
        new(deadline: DateTime.UtcNow + (deadline ?? timeout), cancellationToken: ct);

    /// <summary>The answering node as a contact reachable at <paramref name="address"/>, after checking its signature.</summary>
    Contact Verify(string method, string address, ByteString nonce, V1.Contact? responder, ByteString signature, NodeId? expected)
    {
        var parsed = DhtWire.ParseContact(responder, requireAddress: false)
                     ?? throw new DhtException($"{address} answered {method} with an invalid contact");
        if (expected is { } want && parsed.Id != want)
            throw new DhtException($"{address} is node {parsed.Id}, not the expected {want}");
        if (!NodeIdentity.Verify(parsed.PublicKey, DhtWire.ReplyBytes(method, nonce.Span, parsed.Id), signature.Span))
            throw new DhtException($"{address} answered {method} without a valid signature of node {parsed.Id}");
        if (parsed.Id == identity.Id) throw new DhtException($"{address} is this node itself");
        // The address we dialed is the one proven to reach this key; what the peer announces may be unreachable.
        return parsed with { Address = address };
    }

    static List<Contact> Contacts(IEnumerable<V1.Contact> nodes, int count)
    {
        if (count > DhtLimits.MaxContactsPerReply) throw new DhtException($"reply lists {count} contacts (limit {DhtLimits.MaxContactsPerReply})");
        return nodes.Select(n => DhtWire.ParseContact(n, requireAddress: true)).OfType<Contact>().ToList();
    }

    /// <summary>Pings <paramref name="address"/>; <paramref name="deadline"/> replaces the usual RPC timeout (joining waits longer).</summary>
    public async Task<Contact> PingAsync(string address, NodeId? expected, CancellationToken ct, TimeSpan? deadline = null)
    {
        var nonce = Nonce();
        var reply = await Client(address, expected).PingAsync(new PingRequest { Sender = self(), Nonce = nonce }, Options(ct, deadline)).ConfigureAwait(false);
        return Verify("Ping", address, nonce, reply.Responder, reply.Signature, expected);
    }

    public async Task<(Contact Responder, List<Contact> Nodes)> FindNodeAsync(Contact peer, NodeId target, CancellationToken ct)
    {
        var nonce = Nonce();
        var request = new FindNodeRequest { Sender = self(), Nonce = nonce, Target = ByteString.CopyFrom(target.ToBytes()) };
        var reply = await Client(peer.Address, peer.Id).FindNodeAsync(request, Options(ct)).ConfigureAwait(false);
        var responder = Verify("FindNode", peer.Address, nonce, reply.Responder, reply.Signature, peer.Id);
        return (responder, Contacts(reply.Nodes, reply.Nodes.Count));
    }

    public async Task<(Contact Responder, List<Contact> Nodes, List<SignedEntry> Entries)> FindValueAsync(Contact peer, string key, CancellationToken ct)
    {
        var nonce = Nonce();
        var reply = await Client(peer.Address, peer.Id).FindValueAsync(new FindValueRequest { Sender = self(), Nonce = nonce, Key = key }, Options(ct))
            .ConfigureAwait(false);
        var responder = Verify("FindValue", peer.Address, nonce, reply.Responder, reply.Signature, peer.Id);
        // Entries are only candidates: the reader verifies each one (DhtRecords.MergeVerified), never this peer. A
        // reply with more entries than any honest node holds, or two for one subkey, is a peer wasting our CPU.
        if (reply.Entries.Count > DhtLimits.MaxEntriesPerReply)
            throw new DhtException($"{peer.Address} returned {reply.Entries.Count} entries (limit {DhtLimits.MaxEntriesPerReply})");
        if (reply.Entries.Select(e => e.Subkey).Distinct(StringComparer.Ordinal).Count() != reply.Entries.Count)
            throw new DhtException($"{peer.Address} returned two entries for one subkey");
        var entries = reply.Entries.Select(e => SignedEntry.FromWire(key, e)).ToList();
        return (responder, Contacts(reply.Nodes, reply.Nodes.Count), entries);
    }

    /// <summary>Asks <paramref name="peer"/> to dial <paramref name="address"/> back (this node's announced address); returns its verdict.</summary>
    public async Task<(bool Reachable, string Error)> DialBackAsync(Contact peer, string address, TimeSpan deadline, CancellationToken ct)
    {
        var nonce = Nonce();
        var reply = await Client(peer.Address, peer.Id).DialBackAsync(new DialBackRequest { Sender = self(), Nonce = nonce, Address = address },
            Options(ct, deadline)).ConfigureAwait(false);
        Verify("DialBack", peer.Address, nonce, reply.Responder, reply.Signature, peer.Id);
        return (reply.Reachable, reply.Error.Length > 200 ? reply.Error[..200] : reply.Error);
    }

    /// <summary>Stores records on <paramref name="peer"/>; returns how many it accepted.</summary>
    public async Task<int> StoreAsync(Contact peer, IReadOnlyList<SignedEntry> entries, CancellationToken ct)
    {
        var nonce = Nonce();
        var request = new StoreRequest { Sender = self(), Nonce = nonce };
        request.Records.AddRange(entries.Select(e => new Record { Key = e.Key, Entry = e.ToWire() }));
        var reply = await Client(peer.Address, peer.Id).StoreAsync(request, Options(ct)).ConfigureAwait(false);
        Verify("Store", peer.Address, nonce, reply.Responder, reply.Signature, peer.Id);
        return reply.Statuses.Take(entries.Count).Count(s => s.Accepted);
    }
}

/// <summary>A DHT operation failed: no peer reachable, a peer misbehaved, an argument was refused.</summary>
public class DhtException(string message, Exception? inner = null) : InvalidOperationException(message, inner);
