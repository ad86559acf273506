using System.Runtime.CompilerServices;
using Grpc.Core;
using PetalsSharp.Wire.V1;

namespace PetalsSharp.Server;

public sealed partial class BlockServiceImpl
{
    /// <summary>Pushes one stream may leave waiting for full inboxes before it stops reading more.</summary>
    const int MaxWaitingPushes = 8;

    /// <inheritdoc />
    public override Task<PushReply> Push(PushRequest request, ServerCallContext context) => GuardUnaryAsync("Push", context, async ct =>
    {
        RequestValidator.CheckId(request.SessionId, "session_id");
        await _server.Inboxes.DeliverAsync(request, ct);
        return new PushReply();
    });

    /// <inheritdoc />
    public override Task PushStream(IAsyncStreamReader<PushRequest> requestStream, IServerStreamWriter<PushReply> responseStream,
        ServerCallContext context) => GuardAsync("PushStream", context, async ct =>
    {
        // Headers at once: the sender relies on the lane only after it knows this server accepted it.
        await context.WriteResponseHeadersAsync([]);
        var replying = new SemaphoreSlim(1, 1);   // failures of different sessions may be reported concurrently
        var waiting = new StrongBox<int>();       // pushes waiting in the background for a full inbox
        while (await requestStream.MoveNext(ct))
        {
            var request = requestStream.Current;
            long started = ServerMetrics.Now();
            Task delivered;
            try
            {
                RequestValidator.CheckId(request.SessionId, "session_id");
                delivered = _server.Inboxes.DeliverAsync(request, ct);
            }
            catch (Exception e) { delivered = Task.FromException(e); }
            if (delivered.IsCompletedSuccessfully)
            {
                _server.Metrics.Served("push", System.Diagnostics.Stopwatch.GetElapsedTime(started));
                continue;
            }
            // A full inbox waits in the background, so one slow session never holds up the pushes of the others; but
            // each waiting push holds its tensor, so past a few the stream itself waits (a sender cannot pile them up).
            if (Volatile.Read(ref waiting.Value) >= MaxWaitingPushes)
            {
                await ReportPushAsync(request.SessionId, delivered, started, responseStream, replying, context, ct);
                continue;
            }
            Interlocked.Increment(ref waiting.Value);
            _ = ReportPushAsync(request.SessionId, delivered, started, responseStream, replying, context, ct)
                .ContinueWith(_ => Interlocked.Decrement(ref waiting.Value), TaskScheduler.Default);
        }
    });

    /// <summary>Waits for a push that could not be delivered at once and answers it on the stream if it failed.</summary>
    async Task ReportPushAsync(string sessionId, Task delivered, long started, IServerStreamWriter<PushReply> replies,
        SemaphoreSlim replying, ServerCallContext context, CancellationToken ct)
    {
        try
        {
            await delivered;
            _server.Metrics.Served("push", System.Diagnostics.Stopwatch.GetElapsedTime(started));
            return;
        }
        catch (Exception e)
        {
            var rpc = Translate(e, context);
            _server.Metrics.Failed("push", rpc.StatusCode);
            try
            {
                await replying.WaitAsync(ct);
                try { await replies.WriteAsync(new PushReply { SessionId = sessionId, Error = $"{rpc.StatusCode}: {rpc.Status.Detail}" }, ct); }
                finally { replying.Release(); }
            }
            catch (Exception) { /* the stream ended: the sender's lane is gone with it */ }
        }
    }
}
