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
    bool _opened;

    public RemoteSession(RemotePool pool, IReadOnlyList<ChainHop> chain, SessionOptions options)
    {
        if (options.Batch <= 0) throw new ArgumentOutOfRangeException(nameof(options), "batch must be positive");
        if (options.MaxLength <= 0) throw new ArgumentOutOfRangeException(nameof(options), "max length must be positive");
        _pool = pool;
        Options = options;
        _hops = chain.Select(h => new HopSession(pool.Get(h.Server.Address), h, options, pool.Options)).ToList();
    }

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
            await Task.WhenAll(_hops.Select(h => h.OpenAsync(ct))).ConfigureAwait(false);
            _opened = true;
        }
        var h = hidden;
        foreach (var hop in _hops)
        {
            var output = await hop.StepAsync(h, start, options?.HypoIds, ct).ConfigureAwait(false);
            if (!ReferenceEquals(h, hidden)) h.Dispose();
            h = output;
            options?.OnBlockOutput?.Invoke(hop.Hop.End - 1, h.detach().clone().DetachFromDisposeScope());
        }
        Position = start + (int)hidden.shape[1];
        return h;
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

    public async Task OpenAsync(CancellationToken ct)
    {
        _call = server.Client.Inference(cancellationToken: ct);
        var open = new OpenSession
        {
            SessionId = SessionId, StartBlock = Hop.Start, EndBlock = Hop.End, BatchSize = options.Batch,
            MaxLength = options.MaxLength, OutputCompression = remote.Compression,
        };
        if (options.LeftPadding is not null) open.LeftPadding.AddRange(options.LeftPadding);
        await _call.RequestStream.WriteAsync(new InferenceRequest { Open = open }, ct).ConfigureAwait(false);
        var reply = await ReadAsync(ct).ConfigureAwait(false);
        if (reply.KindCase != InferenceReply.KindOneofCase.Opened)
            throw new SwarmException($"{server.Address} did not confirm the session");
    }

    /// <summary>Sends one step (split along T when it would not fit in a message) and returns the outputs.</summary>
    public async Task<Tensor> StepAsync(Tensor hidden, int start, Tensor? hypoIds, CancellationToken ct)
    {
        long rows = hidden.shape[0], tokens = hidden.shape[1], width = hidden.shape[2];
        long bytesPerToken = rows * width * 4;
        int maxTokens = (int)Math.Max(1, remote.MaxMessageBytes / 2 / Math.Max(1, bytesPerToken));
        var outputs = new List<Tensor>();
        int offset = 0;
        do
        {
            int take = (int)Math.Min(maxTokens, tokens - offset);
            var part = hidden.narrow(1, offset, take);
            var step = new InferenceStep { StepId = Guid.NewGuid().ToString("N"), Hidden = TensorCodec.Encode(part, remote.Compression) };
            if (offset == 0)
            {
                step.StartFromPosition = start;
                if (hypoIds is not null) step.HypoIds = TensorCodec.Encode(hypoIds.to(ScalarType.Int64));
            }
            await _call!.RequestStream.WriteAsync(new InferenceRequest { Step = step }, ct).ConfigureAwait(false);
            var reply = await ReadAsync(ct).ConfigureAwait(false);
            if (reply.KindCase != InferenceReply.KindOneofCase.Result || reply.Result.StepId != step.StepId)
                throw new SwarmException($"{server.Address} answered a different step");
            outputs.Add(RemoteCalls.Expect(TensorCodec.Decode(reply.Result.Hidden, "hidden"), part.shape, server, "hidden"));
            offset += take;
        } while (offset < tokens);
        Remember(hidden, start);
        return outputs.Count == 1 ? outputs[0] : cat(outputs, 1);
    }

    void Remember(Tensor hidden, int start)
    {
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
        foreach (var t in _history) t.Dispose();
        _history.Clear();
    }
}
