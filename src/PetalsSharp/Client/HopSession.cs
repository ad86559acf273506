using Grpc.Core;
using PetalsSharp.Models;
using PetalsSharp.Swarm;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace PetalsSharp.Client;

/// <summary>One server's part of a session: its stream, its position and the inputs it has seen.</summary>
internal sealed class HopSession(ServerConnection server, ChainHop hop, SessionOptions options, RemoteOptions remote) : IDisposable, IAsyncDisposable
{
    AsyncDuplexStreamingCall<InferenceRequest, InferenceReply>? _call;
    readonly List<Tensor> _history = [];

    /// <summary>Tokens of each <see cref="_history"/> entry: asking a tensor its shape is a native call and an allocation, once per entry per step.</summary>
    readonly List<int> _historyTokens = [];

    public ChainHop Hop { get; } = hop;
    public string SessionId { get; } = Guid.NewGuid().ToString("N");

    /// <summary>The secret a push into this session must carry; only the server before this hop is told it.</summary>
    public string PushToken { get; } = Convert.ToHexString(System.Security.Cryptography.RandomNumberGenerator.GetBytes(16));

    /// <summary>Why the last step read from this hop was not pushed on (null: it was, or it was not asked to be).</summary>
    public string? PushRefused { get; private set; }

    /// <summary>Inputs sent so far, in order (rolled back together with the position).</summary>
    public IReadOnlyList<Tensor> History => _history;

    bool _broken;

    /// <summary>The stream could not be opened; the next step fails over at once.</summary>
    public void MarkBroken() => _broken = true;

    /// <summary>
    /// What a replacement must be sent: the inputs behind the first <paramref name="start"/> cache positions (rows
    /// reordered by <paramref name="hypoIds"/> as the cache would be), then this step's input. <c>[B, start+T, H]</c>.
    /// </summary>
    public Tensor ReplayInput(int start, Tensor? hypoIds, Tensor current)
    {
        var parts = new List<Tensor>();                                                 // each [B, t, H]
        int kept = 0;
        foreach (var h in _history)
        {
            if (kept >= start) break;
            var take = (int)Math.Min(h.shape[1], start - kept);
            parts.Add(h.narrow(1, 0, take));
            kept += take;
        }
        if (kept != start) throw new InvalidOperationException($"session history holds {kept} positions, {start} are needed to replay");
        var past = parts.Count == 0 ? null : cat(parts, 1);                             // [B, start, H]
        if (past is not null && hypoIds is not null) past = past.index_select(0, hypoIds.to(ScalarType.Int64));
        return past is null ? current.clone() : cat([past, current], 1);
    }

    public async Task OpenAsync(CancellationToken ct)
    {
        _call = server.Client.Inference(cancellationToken: ct);
        var open = new OpenSession
        {
            SessionId = SessionId, StartBlock = Hop.Start, EndBlock = Hop.End, BatchSize = options.Batch,
            MaxLength = options.MaxLength, OutputCompression = remote.Compression, ActiveAdapter = remote.ActiveAdapter ?? "",
            PushToken = PushToken,
        };
        if (options.LeftPadding is not null) open.LeftPadding.AddRange(options.LeftPadding);
        await WriteAsync(new InferenceRequest { Open = open }, ct).ConfigureAwait(false);
        var reply = await ReadAsync(ct).ConfigureAwait(false);
        if (reply.KindCase != InferenceReply.KindOneofCase.Opened)
            throw new SwarmException($"{server.Address} did not confirm the session");
    }

    /// <summary>Most tokens of <paramref name="hidden"/>'s shape that fit in half a message.</summary>
    int MaxTokens(Tensor hidden) =>
        (int)Math.Max(1, remote.MaxMessageBytes / 2 / Math.Max(1, hidden.shape[0] * hidden.shape[2] * 4));

    /// <summary>Whether this step travels as one message (push relays whole steps only).</summary>
    public bool FitsOneMessage(Tensor hidden) => hidden.shape[1] <= MaxTokens(hidden);

    public string Address => server.Address;

    /// <summary>The server's node id, for the previous server's push to pin (null when unpinned).</summary>
    public string? PeerId => server.PeerId;

    /// <summary>Deep prompts sent with the step at position 0 (a replacement server needs them for the replay).</summary>
    public Tensor? PrefillPrompts { get; private set; }

    /// <summary>
    /// A session on another server of the same blocks that is fed this hop's inputs only when a step is checked
    /// (<see cref="StepVerifier"/>), so a check costs the inputs since the last one, not the whole history.
    /// </summary>
    internal HopSession? Shadow { get; private set; }

    /// <summary>Positions of this hop's inputs the shadow's cache holds.</summary>
    internal int ShadowSynced { get; set; }

    internal void SetShadow(HopSession shadow)
    {
        DropShadow();
        Shadow = shadow;
        ShadowSynced = 0;
    }

    internal void DropShadow()
    {
        var shadow = Shadow;
        Shadow = null;
        if (shadow is not null) _ = shadow.DisposeAsync().AsTask();
    }

    /// <summary>
    /// A step from <paramref name="start"/> is coming: the shadow's positions from there on will be stale, and a beam
    /// reorder (which the shadow did not see) makes all of it stale.
    /// </summary>
    internal void BeforeStep(int start, bool reorders)
    {
        if (Shadow is null) return;
        if (reorders) DropShadow();
        else ShadowSynced = Math.Min(ShadowSynced, start);
    }

    /// <summary>Sends one step (split along T when it would not fit in a message) and returns the outputs.</summary>
    public async Task<Tensor> StepAsync(Tensor hidden, int start, Tensor? hypoIds, CancellationToken ct, string? stepId = null, Tensor? prompts = null)
    {
        EnsureOpen();
        if (prompts is not null)
        {
            PrefillPrompts?.Dispose();
            PrefillPrompts = start == 0 ? prompts.detach().clone().DetachFromDisposeScope() : null;
        }
        long tokens = hidden.shape[1];                                                  // hidden: [B, T, H]
        int maxTokens = MaxTokens(hidden);
        var outputs = new List<Tensor>();                                               // each [B, take, H]
        int offset = 0;
        do
        {
            int take = (int)Math.Min(maxTokens, tokens - offset);
            // The prompts go with the first part, which must hold all their positions.
            if (offset == 0 && prompts is not null) take = (int)Math.Min(tokens, Math.Max(take, prompts.shape[2]));
            var part = hidden.narrow(1, offset, take);                                  // [B, take, H]
            var id = offset == 0 && stepId is not null ? stepId : NewStepId();
            await WriteStepAsync(part, offset == 0 ? start : null, offset == 0 ? hypoIds : null, id, [], ct,
                offset == 0 ? prompts : null).ConfigureAwait(false);
            outputs.Add(await ReadResultAsync(id, part.shape, ct).ConfigureAwait(false));
            offset += take;
        } while (offset < tokens);
        Remember(hidden, start, hypoIds);
        return outputs.Count == 1 ? outputs[0] : cat(outputs, 1);                      // [B, T, H]
    }

    /// <summary>Push mode, first hop: sends the step with the rest of the chain; the reply is read by <see cref="ReceiveAsync"/>.</summary>
    public Task SendAsync(Tensor hidden, int start, Tensor? hypoIds, string stepId, IEnumerable<NextServer> next, CancellationToken ct)
    {
        EnsureOpen();
        return WriteStepAsync(hidden, start, hypoIds, stepId, next, ct);
    }

    /// <summary>
    /// Push mode: reads the reply to a step this hop received (from us or pushed by the previous server) and
    /// records <paramref name="input"/>, the previous hop's output, as what this hop was sent. With
    /// <paramref name="adopt"/> the history takes <paramref name="input"/> itself (the caller must not dispose it
    /// once this returns) instead of a copy: a copy per hop per step was a quarter of the client's work on a reply.
    /// </summary>
    public async Task<Tensor> ReceiveAsync(string stepId, Tensor input, int start, Tensor? hypoIds, CancellationToken ct, bool adopt = false)
    {
        EnsureOpen();
        var output = await ReadResultAsync(stepId, input.shape, ct).ConfigureAwait(false);
        Remember(input, start, hypoIds, adopt);
        return output;
    }

    public static string NewStepId() => Guid.NewGuid().ToString("N");

    void EnsureOpen()
    {
        if (_broken || _call is null) throw new SwarmException($"{server.Address}: the session stream is not open");
    }

    async Task WriteStepAsync(Tensor part, int? start, Tensor? hypoIds, string stepId, IEnumerable<NextServer> next, CancellationToken ct,
        Tensor? prompts = null)
    {
        var step = new InferenceStep { StepId = stepId, Hidden = TensorCodec.Encode(part, remote.Compression) };
        if (prompts is not null) step.Prompts = TensorCodec.Encode(prompts.contiguous());
        if (start is { } s) step.StartFromPosition = s;
        if (hypoIds is not null) step.HypoIds = TensorCodec.Encode(hypoIds.to(ScalarType.Int64));
        step.NextServers.AddRange(next);
        await WriteAsync(new InferenceRequest { Step = step }, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// A write to a call the server already ended (its blocks moved, it is stopping) fails as CANCELLED, which would
    /// look like our own cancellation; report the server's status instead, so the hop is failed over.
    /// </summary>
    async Task WriteAsync(InferenceRequest request, CancellationToken ct)
    {
        try
        {
            await _call!.RequestStream.WriteAsync(request, ct).ConfigureAwait(false);
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Cancelled && !ct.IsCancellationRequested)
        {
            Status status;
            try { status = _call!.GetStatus(); }
            catch (InvalidOperationException) { status = default; }   // not finished from our side yet
            throw new RpcException(status.StatusCode is StatusCode.OK or StatusCode.Cancelled
                ? new Status(StatusCode.Unavailable, $"{server.Address} ended the session stream", e)
                : status);
        }
    }

    async Task<Tensor> ReadResultAsync(string stepId, long[] shape, CancellationToken ct)
    {
        while (true)
        {
            var reply = await ReadAsync(ct).ConfigureAwait(false);
            if (reply.KindCase != InferenceReply.KindOneofCase.Result)
                throw new SwarmException($"{server.Address} sent something other than a step result");
            // A step both pushed and resent after a failure is answered twice; the second copy is stale.
            if (reply.Result.StepId != stepId && _answered.Contains(reply.Result.StepId)) continue;
            if (reply.Result.StepId != stepId)
                throw new SwarmException($"{server.Address} answered step {reply.Result.StepId}, expected {stepId}");
            _answered.Add(stepId);
            if (_answered.Count > 1024) _answered.Clear();
            PushRefused = reply.Result.PushRefused.Length > 0 ? reply.Result.PushRefused : null;
            return RemoteCalls.Expect(TensorCodec.Decode(reply.Result.Hidden, "hidden"), shape, server, "hidden");
        }
    }

    readonly HashSet<string> _answered = [];

    void Remember(Tensor hidden, int start, Tensor? hypoIds, bool adopt = false)
    {
        if (hypoIds is not null)
        {
            // The server reordered its cache rows; the inputs that built them move the same way.
            var order = hypoIds.to(ScalarType.Int64);
            for (int k = 0; k < _history.Count; k++)
            {
                var moved = _history[k].index_select(0, order).DetachFromDisposeScope();
                _history[k].Dispose();
                _history[k] = moved;
            }
        }
        // Keep exactly the inputs that produced the cache's first `start` positions, then this step's.
        int kept = 0, i = 0;
        for (; i < _history.Count && kept + _historyTokens[i] <= start; i++) kept += _historyTokens[i];
        if (i < _history.Count && kept < start)
        {
            var head = _history[i].narrow(1, 0, start - kept).clone().DetachFromDisposeScope();
            _history[i].Dispose();
            _historyTokens[i] = start - kept;
            _history[i++] = head;
        }
        for (int j = i; j < _history.Count; j++) _history[j].Dispose();
        _history.RemoveRange(i, _history.Count - i);
        _historyTokens.RemoveRange(i, _historyTokens.Count - i);
        _history.Add(adopt ? hidden.DetachFromDisposeScope() : hidden.detach().clone().DetachFromDisposeScope());   // [B, T, H]
        _historyTokens.Add((int)hidden.shape[1]);
    }

    async Task<InferenceReply> ReadAsync(CancellationToken ct)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(remote.RequestTimeout);
        if (!await _call!.ResponseStream.MoveNext(timeout.Token).ConfigureAwait(false))
            throw new SwarmException($"{server.Address} closed the session stream");
        return _call.ResponseStream.Current;
    }

    /// <summary>Closes the stream, waiting up to 1 s for the server to see the end (it frees the cache at once then).</summary>
    public async ValueTask DisposeAsync()
    {
        try
        {
            if (_call is not null) await _call.RequestStream.CompleteAsync().WaitAsync(TimeSpan.FromSeconds(1)).ConfigureAwait(false);
        }
        catch (Exception) { /* the stream may already be broken; disposing the call below frees it either way */ }
        Release();
    }

    public void Dispose()
    {
        try { _call?.RequestStream.CompleteAsync().Wait(TimeSpan.FromSeconds(1)); }
        catch (Exception) { /* as in DisposeAsync */ }
        Release();
    }

    void Release()
    {
        DropShadow();
        _call?.Dispose();
        PrefillPrompts?.Dispose();
        foreach (var t in _history) t.Dispose();
        _history.Clear();
        _historyTokens.Clear();
    }
}
