using Google.Protobuf;
using Grpc.Core;
using PetalsSharp.Dht.V1;

namespace PetalsSharp.Dht;

/// <summary>
/// The answering side of the protocol, mapped into an ASP.NET Core app by <see cref="DhtNode.MapService"/>. Every
/// request is checked (nonce size, target size, key, record count) before the node sees it; a malformed request
/// is INVALID_ARGUMENT. Replies are signed over the request's nonce.
/// </summary>
[BindServiceMethod(typeof(DhtGrpcService), nameof(BindStrict))]
public sealed class DhtGrpcService(DhtNode node) : DhtService.DhtServiceBase
{
    /// <summary>Binds the service with request parsing that answers INVALID_ARGUMENT to a malformed message; the
    /// second parameter is the generated base, which Grpc.AspNetCore matches handlers against (<see cref="Wire.StrictRequestBinder"/>).</summary>
    public static void BindStrict(ServiceBinderBase binder, DhtService.DhtServiceBase? service) => DhtService.BindService(new Wire.StrictRequestBinder(binder), service);

    static RpcException Invalid(string detail) => new(new Status(StatusCode.InvalidArgument, detail));

    /// <summary>Refuses a caller over its address's request rate (<see cref="RequestQuota"/>) before any work.</summary>
    void Admit(ServerCallContext context)
    {
        if (node.Quota.TryTake(context.Peer)) return;
        throw new RpcException(new Status(StatusCode.ResourceExhausted,
            $"DHT request quota exceeded for {RequestQuota.AddressOf(context.Peer)}: at most {node.Quota.PerSecond:0.#} requests/s " +
            $"in bursts of {node.Quota.Burst:0}; retry later"));
    }

    (V1.Contact Responder, ByteString Signature) Sign(string method, ByteString nonce, V1.Contact? sender)
    {
        if (!DhtWire.NonceOk(nonce)) throw Invalid($"nonce must be {DhtLimits.MinNonceBytes}..{DhtLimits.MaxNonceBytes} bytes");
        node.OnRequestFrom(sender);
        return (node.SelfContact(), ByteString.CopyFrom(node.Identity.Sign(DhtWire.ReplyBytes(method, nonce.Span, node.Id))));
    }

    public override Task<PingReply> Ping(PingRequest request, ServerCallContext context)
    {
        Admit(context);
        var (responder, signature) = Sign("Ping", request.Nonce, request.Sender);
        return Task.FromResult(new PingReply { Responder = responder, Signature = signature });
    }

    public override Task<StoreReply> Store(StoreRequest request, ServerCallContext context)
    {
        Admit(context);
        if (request.Records.Count > DhtLimits.MaxRecordsPerStore) throw Invalid($"at most {DhtLimits.MaxRecordsPerStore} records per Store");
        var (responder, signature) = Sign("Store", request.Nonce, request.Sender);
        var reply = new StoreReply { Responder = responder, Signature = signature };
        foreach (var record in request.Records)
        {
            var error = record.Entry is null ? "record has no entry" : node.StoreReplica(SignedEntry.FromWire(record.Key, record.Entry));
            reply.Statuses.Add(new StoreStatus { Accepted = error is null, Reason = error ?? "" });
        }
        return Task.FromResult(reply);
    }

    public override Task<FindNodeReply> FindNode(FindNodeRequest request, ServerCallContext context)
    {
        Admit(context);
        if (request.Target.Length != NodeId.Length) throw Invalid($"target must be {NodeId.Length} bytes");
        var (responder, signature) = Sign("FindNode", request.Nonce, request.Sender);
        var reply = new FindNodeReply { Responder = responder, Signature = signature };
        reply.Nodes.AddRange(node.ClosestContacts(NodeId.FromBytes(request.Target.Span)).Select(DhtWire.ToWire));
        return Task.FromResult(reply);
    }

    public override async Task<DialBackReply> DialBack(DialBackRequest request, ServerCallContext context)
    {
        Admit(context);
        if (!node.DialBackQuota.TryTake(context.Peer))
            throw new RpcException(new Status(StatusCode.ResourceExhausted,
                $"dial-back quota exceeded for {RequestQuota.AddressOf(context.Peer)}: at most {node.DialBackQuota.PerSecond:0.#}/s in bursts of {node.DialBackQuota.Burst:0}"));
        if (request.Address.Length is 0 or > 256) throw Invalid("address must be HOST:PORT of at most 256 characters");
        var sender = DhtWire.ParseContact(request.Sender, requireAddress: false) ?? throw Invalid("sender must be a valid contact");
        var (responder, signature) = Sign("DialBack", request.Nonce, request.Sender);
        if (!node.TryEnterDialBack())
            throw new RpcException(new Status(StatusCode.ResourceExhausted, $"this node is already running {DhtNode.MaxConcurrentDialBacks} dial-backs; retry later"));
        try
        {
            var (reachable, error) = await node.DialBackAsync(request.Address, sender.Id, context.Peer, context.CancellationToken).ConfigureAwait(false);
            if (reachable is null) throw new RpcException(new Status(StatusCode.FailedPrecondition, error));   // no verdict
            return new DialBackReply { Responder = responder, Signature = signature, Reachable = reachable.Value, Error = error };
        }
        finally { node.ExitDialBack(); }
    }

    public override Task<FindValueReply> FindValue(FindValueRequest request, ServerCallContext context)
    {
        Admit(context);
        if (DhtRecords.CheckKey(request.Key) is { } error) throw Invalid(error);
        var (responder, signature) = Sign("FindValue", request.Nonce, request.Sender);
        var reply = new FindValueReply { Responder = responder, Signature = signature };
        long budget = DhtLimits.MaxReplyValueBytes;
        foreach (var entry in node.LocalEntries(request.Key).Take(DhtLimits.MaxEntriesPerReply))
        {
            if ((budget -= entry.Size) < 0) break;
            reply.Entries.Add(entry.ToWire());
        }
        reply.Nodes.AddRange(node.ClosestContacts(NodeId.ForKey(request.Key)).Select(DhtWire.ToWire));
        return Task.FromResult(reply);
    }
}
