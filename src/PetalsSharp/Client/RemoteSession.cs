using Grpc.Core;
using PetalsSharp.Models;
using PetalsSharp.Swarm;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace PetalsSharp.Client;

/// <summary>
/// An inference session across a chain of servers: one Inference stream per hop, opened at the first step.
/// Each hop remembers every input it was sent, so that a replacement server could rebuild its cache.
/// </summary>
internal sealed class RemoteSession : IBlockSession
{
    readonly RemotePool _pool;
    readonly List<HopSession> _hops;
    readonly CancellationTokenSource _cts = new();
    readonly RouteOverrides? _routing;
    bool _opened;

    public RemoteSession(RemotePool pool, IReadOnlyList<ChainHop> chain, SessionOptions options, RouteOverrides? routing = null)
    {
        _routing = routing;
        if (options.Batch <= 0) throw new ArgumentOutOfRangeException(nameof(options), "batch must be positive");
        if (options.MaxLength <= 0) throw new ArgumentOutOfRangeException(nameof(options), "max length must be positive");
        _pool = pool;
        Options = options;
        _hops = chain.Select(h => new HopSession(pool.Get(h.Server.Address), h, options, RouteOverrides.Apply(routing, pool.Options))).ToList();
        _start = chain.Count > 0 ? chain[0].Start : 0;
    }

    readonly int _start;

    /// <summary>Deep prompts of <paramref name="hop"/>'s blocks out of the stack's (null stays null).</summary>
    Tensor? HopPrompts(Tensor? prompts, ChainHop hop) => prompts?.narrow(0, hop.Start - _start, hop.End - hop.Start);

    public int Position { get; private set; }
    public SessionOptions Options { get; }

    /// <summary>The chain this session runs through.</summary>
    public IReadOnlyList<ChainHop> Chain => _hops.Select(h => h.Hop).ToList();

    public async ValueTask<Tensor> StepAsync(Tensor hidden, StepOptions? options = null, CancellationToken cancellationToken = default)
    {
        LocalBlockStack.CheckHidden(hidden, _pool.Config);
        if (hidden.shape[0] != Options.Batch)
            throw new ArgumentException($"step has {hidden.shape[0]} rows, the session was opened for {Options.Batch}");
        var start = options?.StartFromPosition ?? Position;
        if (start < 0 || start > Position)
            throw new ArgumentOutOfRangeException(nameof(options), $"start_from_position {start} is outside [0, {Position}]");
        if (start + hidden.shape[1] > Options.MaxLength)
            throw new ArgumentException($"session max length {Options.MaxLength} exceeded: {start} + {hidden.shape[1]} tokens");
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(_cts.Token, cancellationToken);
        var ct = linked.Token;
        if (!_opened)
        {
            await Task.WhenAll(_hops.Select(OpenHopAsync)).ConfigureAwait(false);
            _opened = true;
        }
        var h = hidden;
        var hypoIds = options?.HypoIds;
        var prompts = options?.Prompts?.detach();
        if (prompts is not null) BlockPrompts.Check(prompts, _hops[^1].Hop.End - _start, hidden);
        // Every hop gets its own step id up front, so a step that was pushed and is later resent is deduplicated.
        var ids = _hops.ToDictionary(hop => hop, _ => HopSession.NewStepId());
        // Deep prompts differ per server, so a step carrying them is driven hop by hop.
        bool pushed = _pool.Options.UseServerToServer && _hops.Count > 1 && prompts is null && _hops[0].FitsOneMessage(hidden)
                      && await TrySendWithPushAsync(hidden, start, hypoIds, ids, ct).ConfigureAwait(false);
        for (int i = 0; i < _hops.Count; i++)
        {
            var hop = _hops[i];
            int end = hop.Hop.End;
            var input = h;
            Tensor output;
            try
            {
                output = await RemoteRange.Attempt(_pool, hop.Hop, () => pushed
                    ? hop.ReceiveAsync(ids[hop], input, start, hypoIds, ct)
                    : hop.StepAsync(input, start, hypoIds, ct, ids.GetValueOrDefault(hop), HopPrompts(prompts, hop.Hop))).ConfigureAwait(false);
            }
            catch (HopFailure failure)
            {
                int replacements;
                (output, replacements) = await FailoverAsync(i, h, start, hypoIds, HopPrompts(prompts, _hops[i].Hop), failure, ct).ConfigureAwait(false);
                i += replacements - 1;   // the replacement hops already ran this step
                pushed = false;          // later hops may have missed the push: drive them from here (same step ids)
            }
            if (!ReferenceEquals(h, hidden)) h.Dispose();
            h = output;
            options?.OnBlockOutput?.Invoke(end - 1, h.detach().clone().DetachFromDisposeScope());
        }
        Position = start + (int)hidden.shape[1];
        return h;
    }

    /// <summary>
    /// Sends the step to the first server with the rest of the chain: each server pushes its output to the next,
    /// so a step costs about the sum of one-way hops instead of a round trip per server. The client still reads
    /// every hop's reply, which is what it would replay to a replacement.
    /// </summary>
    async Task<bool> TrySendWithPushAsync(Tensor hidden, int start, Tensor? hypoIds, Dictionary<HopSession, string> ids, CancellationToken ct)
    {
        var first = _hops[0];
        var next = _hops.Skip(1).Select(h => new NextServer { Address = h.Address, SessionId = h.SessionId, StepId = ids[h] });
        try
        {
            await RemoteRange.Attempt(_pool, first.Hop, async () =>
            {
                await first.SendAsync(hidden, start, hypoIds, ids[first], next, ct).ConfigureAwait(false);
                return 0;
            }).ConfigureAwait(false);
            return true;
        }
        catch (HopFailure)
        {
            return false;   // the first hop is down: the step loop fails it over and drives the chain itself
        }
    }

    async Task OpenHopAsync(HopSession hop)
    {
        try { await RemoteRange.Attempt(_pool, hop.Hop, async () => { await hop.OpenAsync(_cts.Token).ConfigureAwait(false); return 0; }).ConfigureAwait(false); }
        catch (HopFailure) when (_pool.Options.MaxRetries > 0)
        {
            // Opening is replayable like any step: the first step will fail over this hop (its history is empty).
            hop.MarkBroken();
        }
    }

    /// <summary>
    /// Replaces hop <paramref name="index"/> after it failed: bans its server (already done by Attempt), plans a
    /// chain for exactly its blocks (possibly several servers), replays the inputs it had seen plus this step's
    /// from position 0 so the new servers rebuild their caches, and returns this step's outputs. Retries with
    /// growing backoff; after MaxRetries the session fails with the last cause.
    /// </summary>
    async Task<(Tensor Output, int Hops)> FailoverAsync(int index, Tensor hidden, int start, Tensor? hypoIds, Tensor? prompts,
        HopFailure first, CancellationToken ct)
    {
        var failed = _hops[index];
        // The replay starts at position 0, so it carries the prompts of the prefill (or of this step, if it is one).
        var replayPrompts = start == 0 ? prompts : failed.PrefillPrompts;
        using var replay = failed.ReplayInput(start, hypoIds, hidden);                         // [B, start+T, H]
        Exception last = first;
        for (int retry = 1; retry <= _pool.Options.MaxRetries; retry++)
        {
            await Task.Delay(RemoteRange.Backoff(_pool.Options, retry), ct).ConfigureAwait(false);
            var fresh = new List<HopSession>();
            try
            {
                var chain = await _pool.PlanAsync(failed.Hop.Start, failed.Hop.End, ct, (long)Options.Batch * Options.MaxLength, routing: _routing).ConfigureAwait(false);
                var x = replay;
                foreach (var hop in chain)
                {
                    var session = new HopSession(_pool.Get(hop.Server.Address), hop, Options, RouteOverrides.Apply(_routing, _pool.Options));
                    fresh.Add(session);
                    var input = x;
                    x = await RemoteRange.Attempt(_pool, hop, async () =>
                    {
                        await session.OpenAsync(ct).ConfigureAwait(false);
                        return await session.StepAsync(input, 0, null, ct, null,
                            replayPrompts?.narrow(0, hop.Start - failed.Hop.Start, hop.End - hop.Start)).ConfigureAwait(false);
                    }).ConfigureAwait(false);
                    if (!ReferenceEquals(input, replay)) input.Dispose();
                }
                failed.Dispose();
                _hops.RemoveAt(index);
                _hops.InsertRange(index, fresh);
                _pool.OnRoute(_routing)?.Invoke(ChainPlanner.Describe(_hops.Select(h => h.Hop)));
                using (x) return (x.narrow(1, start, hidden.shape[1]).clone(), fresh.Count);
            }
            catch (Exception e) when (e is HopFailure or SwarmException)
            {
                // SwarmException: nobody covers the blocks right now; a server may be joining or moving in.
                foreach (var s in fresh) s.Dispose();
                last = e;
            }
        }
        throw new SwarmException($"blocks [{failed.Hop.Start}, {failed.Hop.End}) could not be served after {_pool.Options.MaxRetries} retries; last failure: {last.Message}",
            last is HopFailure ? last.InnerException : last);
    }

    public void Dispose()
    {
        _cts.Cancel();
        foreach (var hop in _hops) hop.Dispose();
        _cts.Dispose();
    }
}

/// <summary>One server's part of a session: its stream, its position and the inputs it has seen.</summary>
internal sealed class HopSession(ServerConnection server, ChainHop hop, SessionOptions options, RemoteOptions remote) : IDisposable
{
    AsyncDuplexStreamingCall<InferenceRequest, InferenceReply>? _call;
    readonly List<Tensor> _history = [];

    public ChainHop Hop { get; } = hop;
    public string SessionId { get; } = Guid.NewGuid().ToString("N");

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
        var parts = new List<Tensor>();
        int kept = 0;
        foreach (var h in _history)
        {
            if (kept >= start) break;
            var take = (int)Math.Min(h.shape[1], start - kept);
            parts.Add(h.narrow(1, 0, take));
            kept += take;
        }
        if (kept != start) throw new InvalidOperationException($"session history holds {kept} positions, {start} are needed to replay");
        var past = parts.Count == 0 ? null : cat(parts, 1);
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
        };
        if (options.LeftPadding is not null) open.LeftPadding.AddRange(options.LeftPadding);
        await WriteAsync(new InferenceRequest { Open = open }, ct).ConfigureAwait(false);
        var reply = await ReadAsync(ct).ConfigureAwait(false);
        if (reply.KindCase != InferenceReply.KindOneofCase.Opened)
            throw new SwarmException($"{server.Address} did not confirm the session");
    }

    /// <summary>Sends one step (split along T when it would not fit in a message) and returns the outputs.</summary>
    /// <summary>Most tokens of <paramref name="hidden"/>'s shape that fit in half a message.</summary>
    int MaxTokens(Tensor hidden) =>
        (int)Math.Max(1, remote.MaxMessageBytes / 2 / Math.Max(1, hidden.shape[0] * hidden.shape[2] * 4));

    /// <summary>Whether this step travels as one message (push relays whole steps only).</summary>
    public bool FitsOneMessage(Tensor hidden) => hidden.shape[1] <= MaxTokens(hidden);

    public string Address => server.Address;

    /// <summary>Deep prompts sent with the step at position 0 (a replacement server needs them for the replay).</summary>
    public Tensor? PrefillPrompts { get; private set; }

    /// <summary>Sends one step (split along T when it would not fit in a message) and returns the outputs.</summary>
    public async Task<Tensor> StepAsync(Tensor hidden, int start, Tensor? hypoIds, CancellationToken ct, string? stepId = null, Tensor? prompts = null)
    {
        EnsureOpen();
        if (prompts is not null)
        {
            PrefillPrompts?.Dispose();
            PrefillPrompts = start == 0 ? prompts.detach().clone().DetachFromDisposeScope() : null;
        }
        long tokens = hidden.shape[1];
        int maxTokens = MaxTokens(hidden);
        var outputs = new List<Tensor>();
        int offset = 0;
        do
        {
            int take = (int)Math.Min(maxTokens, tokens - offset);
            // The prompts go with the first part, which must hold all their positions.
            if (offset == 0 && prompts is not null) take = (int)Math.Min(tokens, Math.Max(take, prompts.shape[2]));
            var part = hidden.narrow(1, offset, take);
            var id = offset == 0 && stepId is not null ? stepId : NewStepId();
            await WriteStepAsync(part, offset == 0 ? start : null, offset == 0 ? hypoIds : null, id, [], ct,
                offset == 0 ? prompts : null).ConfigureAwait(false);
            outputs.Add(await ReadResultAsync(id, part.shape, ct).ConfigureAwait(false));
            offset += take;
        } while (offset < tokens);
        Remember(hidden, start, hypoIds);
        return outputs.Count == 1 ? outputs[0] : cat(outputs, 1);
    }

    /// <summary>Push mode, first hop: sends the step with the rest of the chain; the reply is read by <see cref="ReceiveAsync"/>.</summary>
    public Task SendAsync(Tensor hidden, int start, Tensor? hypoIds, string stepId, IEnumerable<NextServer> next, CancellationToken ct)
    {
        EnsureOpen();
        return WriteStepAsync(hidden, start, hypoIds, stepId, next, ct);
    }

    /// <summary>
    /// Push mode: reads the reply to a step this hop received (from us or pushed by the previous server) and
    /// records <paramref name="input"/>, the previous hop's output, as what this hop was sent.
    /// </summary>
    public async Task<Tensor> ReceiveAsync(string stepId, Tensor input, int start, Tensor? hypoIds, CancellationToken ct)
    {
        EnsureOpen();
        var output = await ReadResultAsync(stepId, input.shape, ct).ConfigureAwait(false);
        Remember(input, start, hypoIds);
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
            return RemoteCalls.Expect(TensorCodec.Decode(reply.Result.Hidden, "hidden"), shape, server, "hidden");
        }
    }

    readonly HashSet<string> _answered = [];

    void Remember(Tensor hidden, int start, Tensor? hypoIds)
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
        for (; i < _history.Count && kept + _history[i].shape[1] <= start; i++) kept += (int)_history[i].shape[1];
        if (i < _history.Count && kept < start)
        {
            var head = _history[i].narrow(1, 0, start - kept).clone().DetachFromDisposeScope();
            _history[i].Dispose();
            _history[i++] = head;
        }
        for (int j = i; j < _history.Count; j++) _history[j].Dispose();
        _history.RemoveRange(i, _history.Count - i);
        _history.Add(hidden.detach().clone().DetachFromDisposeScope());
    }

    async Task<InferenceReply> ReadAsync(CancellationToken ct)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(remote.RequestTimeout);
        if (!await _call!.ResponseStream.MoveNext(timeout.Token).ConfigureAwait(false))
            throw new SwarmException($"{server.Address} closed the session stream");
        return _call.ResponseStream.Current;
    }

    public void Dispose()
    {
        try { _call?.RequestStream.CompleteAsync().Wait(TimeSpan.FromSeconds(1)); }
        catch (Exception) { /* the stream may already be broken; disposing the call below frees it either way */ }
        _call?.Dispose();
        PrefillPrompts?.Dispose();
        foreach (var t in _history) t.Dispose();
        _history.Clear();
    }
}
