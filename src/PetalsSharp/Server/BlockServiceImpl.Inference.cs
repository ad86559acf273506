using Grpc.Core;
using Microsoft.Extensions.Logging;
using PetalsSharp.Models;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using static TorchSharp.torch;
using WireTensor = PetalsSharp.Wire.V1.Tensor;

namespace PetalsSharp.Server;

public sealed partial class BlockServiceImpl
{
    /// <summary>Step ids remembered per session to refuse replays; older ones are forgotten to bound memory.</summary>
    const int RememberedStepIds = 4096;

    /// <inheritdoc />
    public override Task Inference(IAsyncStreamReader<InferenceRequest> requestStream, IServerStreamWriter<InferenceReply> responseStream,
        ServerCallContext context) => GuardAsync("Inference", context, async ct =>
    {
        // Client messages and (once the session is registered) pushed steps arrive in one inbox, so a session
        // serves both in order and one idle timeout covers every wait.
        var inbox = SessionInboxes.CreateInbox();
        using var pumpStop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        _ = PumpAsync(requestStream, inbox.Writer, pumpStop.Token);   // catches everything; stopped below
        try
        {
            await ServeAsync(inbox, responseStream, ClientKey.FromPeer(context.Peer), ct);
        }
        finally { pumpStop.Cancel(); }
    });

    async Task ServeAsync(System.Threading.Channels.Channel<InferenceRequest> inbox, IServerStreamWriter<InferenceReply> responseStream,
        string client, CancellationToken ct)
    {
        var first = await ReadInboxAsync(inbox.Reader, _server.Options.SessionIdleTimeout, ct);
        if (first is null) return;
        if (first.KindCase != InferenceRequest.KindOneofCase.Open)
            throw RequestValidator.Error(StatusCode.FailedPrecondition, "no session: send OpenSession first");
        var open = first.Open;
        var span = _server.EnterSpan();
        try
        {
            CheckOpen(span, open);
            // A move retires the span: the session ends with UNAVAILABLE and the client fails over.
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(ct, span.Retiring);
            try
            {
                await RunSessionAsync(span, open, client, inbox, responseStream, linked.Token);
            }
            catch (OperationCanceledException) when (span.Retiring.IsCancellationRequested && !ct.IsCancellationRequested)
            {
                throw span.MovedError(_server);
            }
        }
        finally { span.Exit(); }
    }

    async Task RunSessionAsync(ServedSpan span, OpenSession open, string client, System.Threading.Channels.Channel<InferenceRequest> inbox,
        IServerStreamWriter<InferenceReply> responseStream, CancellationToken ct)
    {
        using var lease = span.CacheBudget.Open(open.BatchSize, open.MaxLength, open.EndBlock - open.StartBlock, client);
        using var slice = span.Stack.Slice(open.StartBlock, open.EndBlock);
        var options = new SessionOptions(open.BatchSize, open.MaxLength,
            RequestValidator.CheckLeftPadding(open.LeftPadding, open.BatchSize, open.MaxLength))
        { Adapter = FindAdapter(open.ActiveAdapter) };
        if (!_server.Inboxes.TryRegister(open.SessionId, inbox, open.PushToken))
            throw RequestValidator.Error(StatusCode.AlreadyExists, $"session '{Clip(open.SessionId)}' is already open on this server");
        _server.PushTargets.Prefetch(open.EndBlock);   // the first pushed step then finds the next servers known
        var session = await _server.Scheduler.RunAsync(ComputeScheduler.InferencePriority, () => new LocalBlockSession(slice, options, lease), ct);
        _server.SessionOpened();
        try
        {
            // Debug only: with the id, whoever reads the log could at least try the session (pushes also need its token).
            _logger.LogDebug("session {Session} opened: blocks [{Start}, {End}), batch {Batch}, max_length {MaxLength}",
                open.SessionId, open.StartBlock, open.EndBlock, open.BatchSize, open.MaxLength);
            await responseStream.WriteAsync(new InferenceReply
            {
                Opened = new SessionOpened { SessionId = open.SessionId, CacheTokensLeft = span.CacheBudget.CacheTokensLeft },
            }, ct);
            await RunStepsAsync(open, session, inbox.Reader, responseStream, ct);
        }
        finally
        {
            _server.Inboxes.Close(open.SessionId);
            // The step (if any) has finished by now: RunAsync never completes while its work is running.
            session.Dispose();
            _server.SessionClosed();
            _logger.LogDebug("session {Session} closed", open.SessionId);
        }
    }

    void CheckOpen(ServedSpan span, OpenSession open)
    {
        RequestValidator.CheckId(open.SessionId, "session_id");
        RequestValidator.CheckRange(open.StartBlock, open.EndBlock, span.Start, span.End);
        if (open.BatchSize < 1 || open.BatchSize > _server.Options.MaxBatchSize)
            throw new WireException($"batch_size {open.BatchSize} is outside [1, {_server.Options.MaxBatchSize}]");
        if (open.MaxLength < 1 || open.MaxLength > _server.MaxSessionLength)
            throw new WireException($"max_length {open.MaxLength} is outside [1, {_server.MaxSessionLength}] (max_session_length)");
        RequestValidator.CheckCompression(open.OutputCompression, "output_compression");
        FindAdapter(open.ActiveAdapter);
        RequestValidator.CheckLeftPadding(open.LeftPadding, open.BatchSize, open.MaxLength);
        if (open.PushToken.Length > RequestValidator.MaxIdLength)
            throw new WireException($"push_token has {open.PushToken.Length} characters; the limit is {RequestValidator.MaxIdLength}");
    }

    static async Task PumpAsync(IAsyncStreamReader<InferenceRequest> requests, System.Threading.Channels.ChannelWriter<InferenceRequest> inbox,
        CancellationToken ct)
    {
        try
        {
            while (await requests.MoveNext(ct)) await inbox.WriteAsync(requests.Current, ct);
            inbox.TryComplete();
        }
        catch (Exception e)
        {
            inbox.TryComplete(e);
        }
    }

    async Task RunStepsAsync(OpenSession open, LocalBlockSession session, System.Threading.Channels.ChannelReader<InferenceRequest> requests,
        IServerStreamWriter<InferenceReply> replies, CancellationToken ct)
    {
        string? lastId = null;
        InferenceReply? lastReply = null;
        var seen = new HashSet<string>();
        var seenOrder = new Queue<string>();
        int batch = open.BatchSize;
        // The idle clock runs from the last step that ran tokens: a zero-token step or a replay costs its sender
        // nothing, so counting them would let one client keep its cache for ever with a message every few seconds.
        long active = System.Diagnostics.Stopwatch.GetTimestamp();
        var idleTimeout = _server.Options.SessionIdleTimeout;
        while (await ReadInboxAsync(requests, idleTimeout - System.Diagnostics.Stopwatch.GetElapsedTime(active), ct) is { } message)
        {
            long started = ServerMetrics.Now();
            if (message.KindCase == InferenceRequest.KindOneofCase.Open)
                throw RequestValidator.Error(StatusCode.FailedPrecondition, $"session '{Clip(open.SessionId)}' is already open in this stream; open another stream for a new session");
            if (message.KindCase != InferenceRequest.KindOneofCase.Step)
                throw new WireException("empty InferenceRequest (neither open nor step)");
            var step = message.Step;
            RequestValidator.CheckId(step.StepId, "step_id");
            if (step.StepId == lastId)
            {
                // A retried step (the client lost our reply): answer again, never apply twice.
                await replies.WriteAsync(lastReply!, ct);
                continue;
            }
            if (seen.Contains(step.StepId))
                throw RequestValidator.Error(StatusCode.FailedPrecondition,
                    $"step_id '{Clip(step.StepId)}' was already applied and is not the last step; a step is never applied twice");

            long maxElements = (long)batch * open.MaxLength * HiddenSize;
            using var hidden = RequestValidator.DecodeHidden(step.Hidden, "hidden", HiddenSize, maxElements, allowEmptySequence: true);  // [B, T, H]
            if (hidden.shape[0] != batch)
                throw new WireException($"hidden: batch {hidden.shape[0]} does not match the session's batch {batch}");
            int tokens = (int)hidden.shape[1];
            using var hypoIds = RequestValidator.DecodeHypoIds(step.HypoIds, batch);                       // [B] int64, or null
            using var prompts = PromptValidator.Decode(step.Prompts, open.EndBlock - open.StartBlock, batch, tokens, HiddenSize, maxElements);  // [blocks, B or 1, P, H]
            if (prompts is not null && step.NextServers.Count > 0)
                throw new WireException("prompts: a step with deep prompts cannot be pushed (they belong to this server's blocks only)");
            CheckNextServers(open, step);
            int start = session.Position;
            if (step.HasStartFromPosition)
            {
                if (step.StartFromPosition < 0)
                    throw new WireException($"start_from_position {step.StartFromPosition} is negative");
                if (step.StartFromPosition > session.Position)
                    throw RequestValidator.Error(StatusCode.OutOfRange,
                        $"start_from_position {step.StartFromPosition} is beyond the session position {session.Position}");
                start = step.StartFromPosition;
            }
            if ((long)start + tokens > open.MaxLength)
                throw RequestValidator.Error(StatusCode.OutOfRange,
                    $"hidden: position {start} + {tokens} tokens exceeds the session's max_length {open.MaxLength}");

            WireTensor output;
            // A checked step computes within a fraction of a millisecond: wake the kernel team now, not at its first barrier.
            if (tokens > 0) Models.Kernels.WorkerTeam.Shared.Prewarm();
            if (tokens == 0)
                output = EmptyHidden(batch, open.OutputCompression);   // capacity check: nothing to run, position unchanged
            else
                output = await _server.Steps.RunAsync(session,   // [B, T, H], in a pass shared with other sessions' steps when it can
                    hidden, new StepOptions(hypoIds, step.HasStartFromPosition ? start : null, Prompts: prompts), open.OutputCompression, ct);

            var reply = new InferenceReply { Result = new StepResult { StepId = step.StepId, Hidden = output, Position = session.Position } };
            if (step.NextServers.Count > 0 && await PushRefusalAsync(open, step, ct) is { } refusal)
                reply.Result.PushRefused = refusal;
            else if (step.NextServers.Count > 0) Push(step, output);
            await replies.WriteAsync(reply, ct);
            _server.Metrics.Served("inference", System.Diagnostics.Stopwatch.GetElapsedTime(started));
            if (tokens > 0) active = System.Diagnostics.Stopwatch.GetTimestamp();
            lastId = step.StepId;
            lastReply = reply;
            seen.Add(step.StepId);
            seenOrder.Enqueue(step.StepId);
            if (seenOrder.Count > RememberedStepIds) seen.Remove(seenOrder.Dequeue());
        }
    }

    /// <summary>
    /// A chain after this session's span has at most one hop per remaining block, so a longer list is no client's
    /// route: it would only multiply the work one step buys.
    /// </summary>
    void CheckNextServers(OpenSession open, InferenceStep step)
    {
        int most = Math.Min(16, _server.Config.NumLayers - open.EndBlock);
        if (step.NextServers.Count > most)
            throw new WireException($"next_servers has {step.NextServers.Count} entries; a session ending at block {open.EndBlock} of " +
                                    $"{_server.Config.NumLayers} can have at most {most} servers after it");
        foreach (var next in step.NextServers)
        {
            RequestValidator.CheckId(next.SessionId, "next_servers.session_id");
            RequestValidator.CheckId(next.StepId, "next_servers.step_id");
            if (next.Address.Length is 0 or > 256) throw new WireException("next_servers.address must be HOST:PORT");
            if (next.PeerId.Length > 0 && !PeerTls.IsId(next.PeerId))
                throw new WireException("next_servers.peer_id must be empty or a node id of 40 hex digits");
            if (next.PushToken.Length > RequestValidator.MaxIdLength)
                throw new WireException($"next_servers.push_token has {next.PushToken.Length} characters; the limit is {RequestValidator.MaxIdLength}");
        }
    }

    /// <summary>Why this step's output is not pushed on, or null to push it (see <see cref="PushTargets"/>).</summary>
    async Task<string?> PushRefusalAsync(OpenSession open, InferenceStep step, CancellationToken ct)
    {
        // A session of this very server later in the chain would run the step here again (a loop, whatever address names it).
        if (step.NextServers.FirstOrDefault(n => n.SessionId == open.SessionId || _server.Inboxes.IsOpen(n.SessionId)) is { } loop)
            return $"next_servers names session '{Clip(loop.SessionId)}', which is open on this server: no push back into it";
        return await _server.PushTargets.RefusalAsync(step.NextServers[0].Address, open.EndBlock, ct);
    }

    /// <summary>Hands the output to the next server of the chain with the rest of the chain.</summary>
    void Push(InferenceStep step, WireTensor output)
    {
        var next = step.NextServers[0];
        // This hop's output [B, T, H] is the next hop's input; the cache rows move the same way on every hop.
        var pushed = new InferenceStep { StepId = next.StepId, Hidden = output, HypoIds = step.HypoIds };
        if (step.HasStartFromPosition) pushed.StartFromPosition = step.StartFromPosition;
        pushed.NextServers.AddRange(step.NextServers.Skip(1));
        _server.Inboxes.PushLater(next, pushed);
    }

    /// <summary>
    /// The next message, or null when the client closed its side. Waiting longer than <paramref name="wait"/> (what
    /// is left of the idle timeout) ends the session with DEADLINE_EXCEEDED (the caller's using/finally blocks then
    /// free the cache).
    /// </summary>
    async Task<InferenceRequest?> ReadInboxAsync(System.Threading.Channels.ChannelReader<InferenceRequest> inbox, TimeSpan wait,
        CancellationToken ct)
    {
        if (wait <= TimeSpan.Zero) throw IdleError();
        using var timer = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timer.CancelAfter(wait);
        try
        {
            if (!await inbox.WaitToReadAsync(timer.Token)) return null;
            return inbox.TryRead(out var message) ? message : null;
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw IdleError();
        }
    }

    RpcException IdleError() => RequestValidator.Error(StatusCode.DeadlineExceeded,
        $"session idle for {_server.Options.SessionIdleTimeout.TotalSeconds:0.###} s (session_idle_timeout; steps without new tokens do not count); its cache was freed");

    WireTensor EmptyHidden(int batch, Compression compression)
    {
        var t = new WireTensor { Dtype = DType.Float32, Compression = compression };
        t.Shape.AddRange([batch, 0, HiddenSize]);
        return t;
    }

}
