using Grpc.Core;
using Microsoft.Extensions.Logging;
using PetalsSharp.Models;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using static TorchSharp.torch;
using WireTensor = PetalsSharp.Wire.V1.Tensor;

namespace PetalsSharp.Server;

/// <summary>
/// The gRPC service of a <see cref="BlockServer"/>. Requests are decoded and validated on the request's own
/// thread; only model compute goes to the scheduler. Every failure leaves as an <see cref="RpcException"/>
/// whose message names the offending field, and no request can take the process or another session down.
/// </summary>
[BindServiceMethod(typeof(BlockServiceImpl), nameof(BindStrict))]
public sealed partial class BlockServiceImpl : BlockService.BlockServiceBase
{
    /// <summary>Binds the service with request parsing that answers INVALID_ARGUMENT to a malformed message; the
    /// second parameter is the generated base, which Grpc.AspNetCore matches handlers against (<see cref="StrictRequestBinder"/>).</summary>
    public static void BindStrict(ServiceBinderBase binder, BlockService.BlockServiceBase? service) => BlockService.BindService(new StrictRequestBinder(binder), service);

    readonly BlockServer _server;
    readonly ILogger _logger;

    internal BlockServiceImpl(BlockServer server, ILogger logger)
    {
        _server = server;
        _logger = logger;
    }

    int HiddenSize => _server.Config.HiddenSize;

    /// <inheritdoc />
    public override Task<InfoReply> Info(InfoRequest request, ServerCallContext context)
    {
        var o = _server.Options;
        var span = _server.Current;
        var reply = new InfoReply
        {
            ProtocolVersion = Protocol.Version,
            SoftwareVersion = Protocol.SoftwareVersion,
            ModelName = o.ResolvedModelName,
            DhtPrefix = o.ResolvedDhtPrefix,
            StartBlock = span?.Start ?? 0,
            EndBlock = span?.End ?? 0,
            NumBlocks = _server.Config.NumLayers,
            HiddenSize = HiddenSize,
            WeightsDtype = _server.WeightsDtypeName,
            Quant = _server.QuantName,
            CacheTokensLeft = span?.CacheBudget.CacheTokensLeft ?? 0,
            WeightsFingerprint = span?.WeightsFingerprint ?? "",
            MaxMessageBytes = o.MaxMessageBytes,
            MaxSessionLength = _server.MaxSessionLength,
            Relay = _server.RelayName,
        };
        reply.Compressions.AddRange(TensorCodec.Supported);
        reply.BlockFingerprints.AddRange(span?.BlockFingerprints ?? []);
        reply.Adapters.AddRange(_server.Adapters.Names);
        return Task.FromResult(reply);
    }

    /// <inheritdoc />
    public override Task Forward(IAsyncStreamReader<CallMessage> requestStream, IServerStreamWriter<CallMessage> responseStream,
        ServerCallContext context) => GuardAsync("Forward", context, async ct =>
    {
        using var memory = _server.RequestMemory.Open();
        var (header, tensors) = await ReadCallAsync(requestStream, ["hidden"], memory, ct);
        using var received = tensors;
        using var hidden = TakeHidden(received, "hidden");                                           // [B, T, H]
        using var prompts = PromptValidator.Check(received.Take("prompts"), (int)hidden.shape[0], (int)hidden.shape[1]);   // [blocks, B or 1, P, H]
        var reply = await RunOnSpanAsync(header, hidden, (slice, padding, adapter) =>
        {
            using var noGrad = no_grad();
            return [slice.Forward(hidden, new ForwardOptions(padding, Prompts: prompts) { Adapter = adapter })];   // [B, T, H]
        }, ct);
        await WriteChunksAsync(responseStream, "hidden", reply[0], ct);
    });

    /// <inheritdoc />
    public override Task Backward(IAsyncStreamReader<CallMessage> requestStream, IServerStreamWriter<CallMessage> responseStream,
        ServerCallContext context) => GuardAsync("Backward", context, async ct =>
    {
        using var memory = _server.RequestMemory.Open();
        var (header, tensors) = await ReadCallAsync(requestStream, ["hidden", "grad_output"], memory, ct);
        using var received = tensors;
        using var hidden = TakeHidden(received, "hidden");                                           // [B, T, H]
        using var gradOutput = TakeHidden(received, "grad_output");                                  // [B, T, H]
        if (!hidden.shape.SequenceEqual(gradOutput.shape))
            throw new WireException($"grad_output: shape [{string.Join(", ", gradOutput.shape)}] differs from hidden [{string.Join(", ", hidden.shape)}]");
        using var prompts = PromptValidator.Check(received.Take("prompts"), (int)hidden.shape[0], (int)hidden.shape[1]);   // [blocks, B or 1, P, H]
        var reply = await RunOnSpanAsync(header, hidden, (slice, padding, adapter) =>
        {
            // Servers keep no activations between calls (as in Petals): backward recomputes the forward pass.
            using var grad = enable_grad();
            var input = hidden.detach().requires_grad_(true);                                         // [B, T, H]
            var p = prompts?.detach().requires_grad_(true);                                           // [blocks, B or 1, P, H]
            var output = slice.Forward(input, new ForwardOptions(padding, Prompts: p) { Adapter = adapter });   // [B, T, H]
            // grad_input [B, T, H], then grad_prompts [blocks, B or 1, P, H] when prompts came
            return autograd.grad([output], p is null ? [input] : [input, p], [gradOutput]).ToArray();
        }, ct);
        await WriteChunksAsync(responseStream, "grad_input", reply[0], ct);
        if (reply.Length > 1) await WriteChunksAsync(responseStream, "grad_prompts", reply[1], ct);
    });

    /// <summary>
    /// Checks a Forward/Backward call against the span served now and runs <paramref name="compute"/> on the blocks
    /// it names, on the compute thread after queued inference steps; the span cannot be freed meanwhile.
    /// </summary>
    async Task<WireTensor[]> RunOnSpanAsync(CallHeader header, TorchSharp.torch.Tensor hidden,
        Func<LocalBlockStack, int[]?, Models.Lora.ILinearAdapter?, TorchSharp.torch.Tensor[]> compute, CancellationToken ct)
    {
        var span = _server.EnterSpan();
        try
        {
            var padding = CheckCall(span, header, hidden);
            var adapter = FindAdapter(header.ActiveAdapter);
            return await _server.Scheduler.RunAsync(ComputeScheduler.ForwardBackwardPriority, () =>
            {
                using var scope = NewDisposeScope();
                using var slice = span.Stack.Slice(header.StartBlock, header.EndBlock);
                return compute(slice, padding, adapter).Select(t => TensorCodec.Encode(t, header.OutputCompression)).ToArray();
            }, ct);
        }
        finally { span.Exit(); }
    }

    /// <summary>A required hidden-state tensor of the call (its shape was checked as it arrived), checked finite.</summary>
    static TorchSharp.torch.Tensor TakeHidden(TensorDecodingAssembler tensors, string name)
    {
        var t = tensors.Take(name) ?? throw new WireException($"{name}: missing tensor");
        try
        {
            TensorCodec.RequireFinite(t, name);
            return t;
        }
        catch
        {
            t.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Checks a tensor's header as soon as it arrives, before its values are allocated: shapes against the model and
    /// the call, and B × T against the per-request token limit (which compressed values could otherwise pass).
    /// </summary>
    void CheckHeader(string name, WireTensor meta, CallHeader header)
    {
        if (name == "prompts")
        {
            PromptValidator.CheckHeader(meta, Math.Max(0, header.EndBlock - header.StartBlock), HiddenSize);
            return;
        }
        RequestValidator.CheckHidden(meta, name, HiddenSize, allowEmptySequence: false);
        // The codec's element limit first (its message), then the server's token limit; dimensions are ≥ 0 here.
        long elements = 1;
        foreach (var d in meta.Shape)
            if (d > MaxElements || (elements *= d) > MaxElements)
                throw new WireException($"{name}: shape [{string.Join(", ", meta.Shape)}] exceeds the limit of {MaxElements} elements");
        long batch = meta.Shape[0], tokens = meta.Shape[1], limit = _server.Options.MaxRequestTokens;
        if (batch > limit || tokens > limit || batch * tokens > limit)
            throw RequestValidator.Error(StatusCode.ResourceExhausted,
                $"{name}: {batch} × {tokens} tokens exceed this server's limit of {limit} per request");
    }

    /// <summary>Bytes of Tensor framing (shape, dtype, field tags) allowed on top of the values.</summary>
    const long TensorFramingBytes = 1024;

    /// <summary>
    /// The largest serialized tensor a Forward/Backward call can use, from the model rather than a fixed size:
    /// hidden and grad_output hold at most MaxRequestTokens rows of the hidden size in float32 (compressed ones are
    /// smaller), deep prompts one such set per block of the model.
    /// </summary>
    (long Bytes, string Why) TensorLimit(string name)
    {
        long tokens = _server.Options.MaxRequestTokens, rowBytes = (long)HiddenSize * sizeof(float);
        return name == "prompts"
            ? (_server.Config.NumLayers * tokens * rowBytes + TensorFramingBytes,
                $"{_server.Config.NumLayers} blocks × this server's {tokens} tokens per request × {HiddenSize} hidden × 4 B, plus framing")
            : (tokens * rowBytes + TensorFramingBytes, $"this server's {tokens} tokens per request × {HiddenSize} hidden × 4 B, plus framing");
    }

    /// <summary>Elements a Forward/Backward tensor may have once decoded to float32.</summary>
    long MaxElements => _server.Options.MaxTensorBytes / sizeof(float);

    int[]? CheckCall(ServedSpan span, CallHeader header, TorchSharp.torch.Tensor hidden)
    {
        RequestValidator.CheckRange(header.StartBlock, header.EndBlock, span.Start, span.End);
        RequestValidator.CheckCompression(header.OutputCompression, "output_compression");
        int batch = (int)hidden.shape[0], tokens = (int)hidden.shape[1];
        if ((long)batch * tokens > _server.Options.MaxRequestTokens)
            throw RequestValidator.Error(StatusCode.ResourceExhausted,
                $"hidden: {batch} × {tokens} tokens exceed this server's limit of {_server.Options.MaxRequestTokens} per request");
        return RequestValidator.CheckLeftPadding(header.LeftPadding, batch, tokens);
    }

    /// <summary>
    /// The adapter a request names (null for "" = base weights). An unknown name is FAILED_PRECONDITION: the request
    /// is well-formed but this server cannot serve it, and the client should route to a server that holds it.
    /// </summary>
    Models.Lora.LoraAdapter? FindAdapter(string name)
    {
        if (name.Length == 0) return null;
        return _server.Adapters.Find(name) ?? throw RequestValidator.Error(StatusCode.FailedPrecondition,
            $"active_adapter '{Clip(name)}' is not loaded on this server (it holds: {(_server.Adapters.Names.Count == 0 ? "no adapters" : string.Join(", ", _server.Adapters.Names))})");
    }

    /// <summary>Reads a CallHeader and then the chunks of the named tensors.</summary>
    async Task<(CallHeader, TensorDecodingAssembler)> ReadCallAsync(IAsyncStreamReader<CallMessage> stream,
        string[] names, RequestMemory.Lease memory, CancellationToken ct)
    {
        var timeout = _server.Options.RequestReadTimeout;
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(timeout);
        try
        {
            // The timeout runs between messages, not over the whole upload: a big tensor on a slow link is fine, a
            // peer that stops sending is not.
            return await ReadCallCoreAsync(stream, names, memory, () => deadline.CancelAfter(timeout), deadline.Token);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw RequestValidator.Error(StatusCode.DeadlineExceeded,
                $"no part of the request's tensors arrived within {timeout.TotalSeconds:0.###} s (the server's request read timeout)");
        }
    }

    async Task<(CallHeader, TensorDecodingAssembler)> ReadCallCoreAsync(IAsyncStreamReader<CallMessage> stream,
        string[] names, RequestMemory.Lease memory, Action received, CancellationToken ct)
    {
        if (!await stream.MoveNext(ct)) throw new WireException("empty request: a CallHeader must come first");
        if (stream.Current.KindCase != CallMessage.KindOneofCase.Header)
            throw new WireException($"first message is {stream.Current.KindCase}; a CallHeader must come first");
        var header = stream.Current.Header;
        // The header says whether deep prompts come, so they are required then and refused otherwise; no tensor is
        // ever silently ignored because of the order it was sent in.
        // Each tensor is decoded as its chunks arrive, into a tensor allocated once from its checked header: a call
        // holds its payload once, as values, and the chunks are dropped as soon as they are copied.
        var assembler = new TensorDecodingAssembler(header.WithPrompts ? [.. names, "prompts"] : names, _server.Options.MaxTensorBytes,
            name => new TensorStreamDecoder(name, MaxElements, meta => CheckHeader(name, meta, header), memory.Reserve), TensorLimit);
        try
        {
            // Stop as soon as every tensor is whole: the reply need not wait for the client to close its side.
            while (!assembler.IsComplete && await stream.MoveNext(ct))
            {
                received();
                var message = stream.Current;
                switch (message.KindCase)
                {
                    case CallMessage.KindOneofCase.Chunk: assembler.Add(message.Chunk); break;
                    case CallMessage.KindOneofCase.Header: throw new WireException("CallHeader sent twice");
                    default: throw new WireException("empty CallMessage (neither header nor chunk)");
                }
            }
            assembler.RequireComplete();
            return (header, assembler);
        }
        catch
        {
            assembler.Dispose();
            throw;
        }
    }

    static async Task WriteChunksAsync(IServerStreamWriter<CallMessage> stream, string name, WireTensor tensor, CancellationToken ct)
    {
        foreach (var message in TensorChunks.Split(name, tensor)) await stream.WriteAsync(message, ct);
    }

    /// <summary>Runs a handler and turns every failure into an RpcException with a fitting status code.</summary>
    async Task GuardAsync(string rpc, ServerCallContext context, Func<CancellationToken, Task> handler)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(context.CancellationToken, _server.Stopping);
        long started = ServerMetrics.Now();
        try
        {
            await handler(cts.Token);
            // An Inference call is a whole session and a PushStream a lane of pushes: their steps and pushes are counted one by one.
            if (rpc is not ("Inference" or "PushStream")) _server.Metrics.Served(rpc.ToLowerInvariant(), System.Diagnostics.Stopwatch.GetElapsedTime(started));
        }
        catch (Exception e) when (Translate(e, context) is { } rpc2)
        {
            _server.Metrics.Failed(rpc.ToLowerInvariant(), rpc2.StatusCode);
            if (rpc2.StatusCode == StatusCode.Internal) _logger.LogError(e, "{Rpc} from {Peer} failed", rpc, context.Peer);
            else _logger.LogDebug("{Rpc} from {Peer}: {Code} {Message}", rpc, context.Peer, rpc2.StatusCode, rpc2.Status.Detail);
            if (ReferenceEquals(rpc2, e)) throw;
            throw rpc2;
        }
    }

    /// <summary><see cref="GuardAsync"/> for a unary call with a reply.</summary>
    async Task<T> GuardUnaryAsync<T>(string rpc, ServerCallContext context, Func<CancellationToken, Task<T>> handler)
    {
        T result = default!;
        await GuardAsync(rpc, context, async ct => result = await handler(ct));
        return result;
    }

    RpcException Translate(Exception e, ServerCallContext context) => e switch
    {
        RpcException r => r,
        TensorTooLargeException t => RequestValidator.Error(StatusCode.ResourceExhausted, t.Message),
        WireException w => RequestValidator.Error(StatusCode.InvalidArgument, w.Message),
        OperationCanceledException when _server.Stopping.IsCancellationRequested =>
            RequestValidator.Error(StatusCode.Unavailable, "server is stopping"),
        // A client that resets its stream or hangs up is a normal event, whatever exception its absence caused here
        // (a cancelled read, "the client reset the request stream", a write to a finished call).
        _ when context.CancellationToken.IsCancellationRequested =>
            RequestValidator.Error(StatusCode.Cancelled, "call cancelled by the client"),
        // Kestrel may throw "the client reset the request stream" a moment before it cancels the call's token, and
        // gRPC's reader "can't read messages after the request is complete" when a hostile client aborts a stream.
        IOException or InvalidOperationException when context.CancellationToken.WaitHandle.WaitOne(TimeSpan.FromMilliseconds(250)) =>
            RequestValidator.Error(StatusCode.Cancelled, "call cancelled by the client"),
        ObjectDisposedException when _server.Stopping.IsCancellationRequested =>
            RequestValidator.Error(StatusCode.Unavailable, "server is stopping"),
        ArgumentException a => RequestValidator.Error(StatusCode.InvalidArgument, a.Message),
        _ => RequestValidator.Error(StatusCode.Internal, $"{e.GetType().Name}: {e.Message}"),
    };

    static string Clip(string s) => s.Length <= 64 ? s : s[..64] + "…";
}
