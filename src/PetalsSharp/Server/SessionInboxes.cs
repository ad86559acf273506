using System.Collections.Concurrent;
using System.Threading.Channels;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using PetalsSharp.Dht;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;

namespace PetalsSharp.Server;

/// <summary>
/// Open inference sessions by id, each with an inbox that merges the client's own messages and steps pushed by
/// the previous server of the chain, and the outgoing side of push: channels to next servers.
/// </summary>
internal sealed class SessionInboxes(ServerOptions options, PeerChannels peers, ILogger logger) : IDisposable
{
    readonly PushLanes _lanes = new(options, peers, logger);
    readonly ConcurrentDictionary<string, (Channel<InferenceRequest> Inbox, byte[] PushToken)> _inboxes = new();

    /// <summary>A session's inbox: bounded, so neither a client nor a pushing server can queue without limit.</summary>
    public static Channel<InferenceRequest> CreateInbox() =>
        Channel.CreateBounded<InferenceRequest>(new BoundedChannelOptions(64) { FullMode = BoundedChannelFullMode.Wait });

    /// <summary>
    /// Makes a session reachable by pushes that carry <paramref name="pushToken"/> (empty: by none); false when the
    /// id is already open here.
    /// </summary>
    public bool TryRegister(string sessionId, Channel<InferenceRequest> inbox, string pushToken) =>
        _inboxes.TryAdd(sessionId, (inbox, System.Text.Encoding.UTF8.GetBytes(pushToken)));

    /// <summary>Whether a session with this id is open here (a push to it would loop back into this server).</summary>
    public bool IsOpen(string sessionId) => _inboxes.ContainsKey(sessionId);

    public void Close(string sessionId)
    {
        if (_inboxes.TryRemove(sessionId, out var entry)) entry.Inbox.Writer.TryComplete();
    }

    /// <summary>
    /// Delivers a pushed step. A session id is logged and guessable, so it is no credential: the push must carry the
    /// session's push token, which its client gave only to the server before this one in its chain.
    /// </summary>
    public Task DeliverAsync(PushRequest request, CancellationToken ct)
    {
        var inbox = Admit(request);
        var step = new InferenceRequest { Step = request.Step };
        // A session reads its inbox as fast as it computes, so there is room almost always: no timer, no await.
        return inbox.Writer.TryWrite(step) ? Task.CompletedTask : WaitForRoomAsync(inbox, step, ct);
    }

    /// <summary>The inbox a push may enter, or the RpcException that refuses it.</summary>
    Channel<InferenceRequest> Admit(PushRequest request)
    {
        if (request.Step is null) throw new RpcException(new Status(StatusCode.InvalidArgument, "push without a step"));
        // One answer for "no such session" and "wrong token", so a push reveals nothing about which ids are open.
        var denied = new RpcException(new Status(StatusCode.PermissionDenied,
            "push refused: no open session here accepts this push_token (only the previous server of the session's chain holds it)"));
        if (!_inboxes.TryGetValue(request.SessionId, out var entry) || entry.PushToken.Length == 0) throw denied;
        var given = System.Text.Encoding.UTF8.GetBytes(request.PushToken);
        if (!System.Security.Cryptography.CryptographicOperations.FixedTimeEquals(given, entry.PushToken)) throw denied;
        return entry.Inbox;
    }

    static async Task WaitForRoomAsync(Channel<InferenceRequest> inbox, InferenceRequest step, CancellationToken ct)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(10));
        try { await inbox.Writer.WriteAsync(step, timeout.Token); }
        // No id in the message: the pushing server logs it at warning level.
        catch (ChannelClosedException) { throw new RpcException(new Status(StatusCode.NotFound, "the session closed before the push arrived")); }
    }

    /// <summary>
    /// Sends this hop's output on to the next server, without holding up the reply to our client: on the lane to that
    /// server when one is open (the write starts on this thread, no hand-off), else with a unary call. A failed push
    /// is only logged: the client notices the silent hop on that hop's stream and fails over with what it holds.
    /// </summary>
    public void PushLater(NextServer next, InferenceStep step)
    {
        var request = new PushRequest { SessionId = next.SessionId, Step = step, PushToken = next.PushToken };
        // Pinned to the id the client routed by: a push to a hijacked address fails its handshake, not leaks the step.
        var dial = PeerTarget.Dial(next.Address, options.Tls, next.PeerId.Length > 0 ? next.PeerId.ToLowerInvariant() : null);
        if (_lanes.TrySend(dial, request) is { } sent)
        {
            if (!sent.IsCompletedSuccessfully)
                // The lane broke under this push: it may still reach the session another way.
                _ = sent.ContinueWith(t => { if (t.IsFaulted || t.IsCanceled) PushUnary(dial, request); }, TaskScheduler.Default);
            return;
        }
        PushUnary(dial, request);
    }

    void PushUnary(string address, PushRequest request)
    {
        _ = Task.Run(async () =>
        {
            try
            {
                using var lease = peers.Rent(address);
                var client = new BlockService.BlockServiceClient(SwarmAuth.Apply(lease.Channel, options.SwarmKey));
                await client.PushAsync(request, deadline: DateTime.UtcNow.AddSeconds(30));
            }
            catch (Exception e)
            {
                logger.LogWarning("push to {Address} failed: {Message}", address, e.Message);
            }
        });
    }

    /// <summary>Closes the push lanes (before the peer channels they use are disposed).</summary>
    public void Dispose() => _lanes.Dispose();
}
