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
internal sealed class SessionInboxes(ServerOptions options, PeerChannels peers, ILogger logger)
{
    readonly ConcurrentDictionary<string, Channel<InferenceRequest>> _inboxes = new();

    /// <summary>A session's inbox: bounded, so neither a client nor a pushing server can queue without limit.</summary>
    public static Channel<InferenceRequest> CreateInbox() =>
        Channel.CreateBounded<InferenceRequest>(new BoundedChannelOptions(64) { FullMode = BoundedChannelFullMode.Wait });

    /// <summary>Makes a session reachable by pushes; false when the id is already open here.</summary>
    public bool TryRegister(string sessionId, Channel<InferenceRequest> inbox) => _inboxes.TryAdd(sessionId, inbox);

    public void Close(string sessionId)
    {
        if (_inboxes.TryRemove(sessionId, out var inbox)) inbox.Writer.TryComplete();
    }

    /// <summary>Delivers a pushed step; NOT_FOUND when no such session is open here.</summary>
    public async Task DeliverAsync(PushRequest request, CancellationToken ct)
    {
        if (request.Step is null) throw new RpcException(new Status(StatusCode.InvalidArgument, "push without a step"));
        if (!_inboxes.TryGetValue(request.SessionId, out var inbox))
            throw new RpcException(new Status(StatusCode.NotFound, $"no open session '{Clip(request.SessionId)}' on this server"));
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(10));
        try { await inbox.Writer.WriteAsync(new InferenceRequest { Step = request.Step }, timeout.Token); }
        catch (ChannelClosedException) { throw new RpcException(new Status(StatusCode.NotFound, $"session '{Clip(request.SessionId)}' closed")); }
    }

    /// <summary>
    /// Sends this hop's output on to the next server, without holding up the reply to our client. A failed push is
    /// only logged: the client notices the silent hop on that hop's stream and fails over with what it holds.
    /// </summary>
    public void PushLater(NextServer next, InferenceStep step)
    {
        _ = Task.Run(async () =>
        {
            try
            {
                var client = new BlockService.BlockServiceClient(SwarmAuth.Apply(peers.Get(next.Address), options.SwarmKey));
                await client.PushAsync(new PushRequest { SessionId = next.SessionId, Step = step }, deadline: DateTime.UtcNow.AddSeconds(30));
            }
            catch (Exception e)
            {
                logger.LogWarning("push to {Address} failed: {Message}", next.Address, e.Message);
            }
        });
    }

    static string Clip(string s) => s.Length <= 64 ? s : s[..64] + "...";
}
