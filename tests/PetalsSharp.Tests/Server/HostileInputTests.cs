using System.Buffers.Binary;
using Google.Protobuf;
using Grpc.Core;
using PetalsSharp.Models;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;
using WireTensor = PetalsSharp.Wire.V1.Tensor;

namespace PetalsSharp.Tests.Server;

/// <summary>
/// Hostile and broken requests each get the expected status and a message naming the problem, while a healthy
/// session on the same server keeps stepping and still matches local blocks.
/// </summary>
public sealed class HostileInputTests(ServerFixture f, ITestOutputHelper output) : IClassFixture<ServerFixture>
{
    sealed record Case(string Name, StatusCode Code, string MessagePart, Func<Task> Call);

    static WireTensor Hidden(long b, long t, long h = 64, Compression c = Compression.None, float fill = 0.5f)
    {
        using var x = full(new[] { b, t, h }, fill);
        return TensorCodec.Encode(x, c);
    }

    static WireTensor With(WireTensor t, Action<WireTensor> edit)
    {
        var copy = t.Clone();
        edit(copy);
        return copy;
    }

    static CallMessage HeaderMsg(int start = 0, int end = 3, Compression c = Compression.None, params int[] pad) =>
        new() { Header = ServerClient.Header(start, end, c, pad) };

    static CallMessage Chunk(string name, long total, byte[] part, bool last) =>
        new() { Chunk = new TensorChunk { Name = name, TotalBytes = total, Part = ByteString.CopyFrom(part), Last = last } };

    /// <summary>
    /// Each attack on a connection of its own, as separate attackers would: over TLS, an upload the server refused
    /// mid-message can leave that connection's send window spent, and later calls on it would wait for nothing.
    /// </summary>
    async Task AsAttacker(Func<ServerClient, Task> attack)
    {
        using var attacker = new ServerClient(f.Server.Address);
        await attack(attacker);
    }

    Task Forward(params CallMessage[] messages) => AsAttacker(c => c.CallAsync(false, messages, "hidden"));

    Task ForwardHidden(WireTensor hidden, CallMessage? header = null) =>
        AsAttacker(c => c.CallAsync(false, ServerClient.Messages((header ?? HeaderMsg()).Header, ("hidden", hidden)), "hidden"));

    Task Backward(WireTensor hidden, WireTensor? grad) =>
        AsAttacker(c => c.CallAsync(true, grad is null
            ? ServerClient.Messages(ServerClient.Header(0, 3), ("hidden", hidden))
            : ServerClient.Messages(ServerClient.Header(0, 3), ("hidden", hidden), ("grad_output", grad)), "grad_input"));

    /// <summary>Sends raw inference messages and reads replies until the server ends the call.</summary>
    Task Inference(params InferenceRequest[] messages) => AsAttacker(async c =>
    {
        using var call = c.Raw.Inference(deadline: DateTime.UtcNow.AddSeconds(60));
        foreach (var m in messages) await call.RequestStream.WriteAsync(m);
        await call.RequestStream.CompleteAsync();
        while (await call.ResponseStream.MoveNext(CancellationToken.None)) { }
    });

    static InferenceRequest Open(int batch = 1, int maxLength = 16, int start = 0, int end = 3, string id = "h", params int[] pad)
    {
        var o = ServerClient.Open(batch, maxLength, start, end, id);
        o.LeftPadding.AddRange(pad);
        return new InferenceRequest { Open = o };
    }

    static InferenceRequest Step(string id, WireTensor hidden, WireTensor? hypo = null, int? from = null)
    {
        var s = new InferenceStep { StepId = id, Hidden = hidden, HypoIds = hypo };
        if (from is { } p) s.StartFromPosition = p;
        return new InferenceRequest { Step = s };
    }

    static WireTensor Ids(params long[] ids)
    {
        using var t = tensor(ids);
        return TensorCodec.Encode(t);
    }

    IEnumerable<Case> Cases()
    {
        var ok = Hidden(1, 3);
        var int8 = Hidden(1, 3, c: Compression.Int8Blockwise);
        static byte[] Scales(int count, float value)
        {
            var b = new byte[count * 4];
            for (int i = 0; i < count; i++) BinaryPrimitives.WriteSingleLittleEndian(b.AsSpan(i * 4), value);
            return b;
        }
        const StatusCode Bad = StatusCode.InvalidArgument;
        // Forward: tensor contents.
        yield return new("wrong rank", Bad, "rank 2", () => ForwardHidden(With(ok, t => { t.Shape.Clear(); t.Shape.Add([3, 64]); })));
        yield return new("wrong hidden size", Bad, "hidden size 32", () => ForwardHidden(Hidden(1, 3, 32)));
        yield return new("int64 hidden", Bad, "dtype Int64", () => ForwardHidden(With(ok, t => t.Dtype = DType.Int64)));
        yield return new("unknown dtype", Bad, "dtype 99", () => ForwardHidden(With(ok, t => t.Dtype = (DType)99)));
        yield return new("unknown compression", Bad, "unknown compression 9", () => ForwardHidden(With(ok, t => t.Compression = (Compression)9)));
        yield return new("payload off by one", Bad, "payload has 767 bytes", () => ForwardHidden(With(ok, t => t.Data = ByteString.CopyFrom(t.Data.Span[1..].ToArray()))));
        yield return new("negative dimension", Bad, "negative dimension -3", () => ForwardHidden(With(ok, t => t.Shape[1] = -3)));
        yield return new("huge dimension product", Bad, "exceeds the limit", () => ForwardHidden(With(ok, t => { t.Shape[0] = 1L << 30; t.Shape[1] = 1L << 30; })));
        yield return new("NaN", Bad, "NaN", () => ForwardHidden(Hidden(1, 3, fill: float.NaN)));
        yield return new("Inf", Bad, "infinite", () => ForwardHidden(Hidden(1, 3, fill: float.PositiveInfinity)));
        yield return new("int8 missing scales", Bad, "scales", () => ForwardHidden(With(int8, t => t.Scales = ByteString.Empty)));
        yield return new("int8 negative scale", Bad, "invalid scale", () => ForwardHidden(With(int8, t => t.Scales = ByteString.CopyFrom(Scales(3, -1f)))));
        yield return new("int8 NaN scale", Bad, "invalid scale NaN", () => ForwardHidden(With(int8, t => t.Scales = ByteString.CopyFrom(Scales(3, float.NaN)))));
        yield return new("scales without int8", Bad, "scales are only allowed", () => ForwardHidden(With(ok, t => t.Scales = ByteString.CopyFrom(Scales(1, 1f)))));
        // Forward: header.
        yield return new("range outside span", Bad, "not inside the served span", () => ForwardHidden(ok, HeaderMsg(0, 5)));
        yield return new("empty range", Bad, "start_block must be below end_block", () => ForwardHidden(ok, HeaderMsg(1, 1)));
        yield return new("reversed range", Bad, "start_block must be below end_block", () => ForwardHidden(ok, HeaderMsg(2, 1)));
        yield return new("left_padding wrong length", Bad, "left_padding has 2 entries", () => ForwardHidden(ok, HeaderMsg(0, 3, Compression.None, 0, 1)));
        yield return new("left_padding negative", Bad, "left_padding[0] = -1", () => ForwardHidden(ok, HeaderMsg(0, 3, Compression.None, -1)));
        yield return new("left_padding beyond T", Bad, "left_padding[0] = 4", () => ForwardHidden(ok, HeaderMsg(0, 3, Compression.None, 4)));
        yield return new("unknown output_compression", Bad, "output_compression", () => ForwardHidden(ok, HeaderMsg(0, 3, (Compression)7)));
        yield return new("unknown adapter requested", StatusCode.FailedPrecondition, "active_adapter 'lora' is not loaded", () => ForwardHidden(ok, new CallMessage { Header = new CallHeader { StartBlock = 0, EndBlock = 3, ActiveAdapter = "lora" } }));
        // Forward: stream structure.
        var okBytes = ok.ToByteArray();
        yield return new("empty request", Bad, "CallHeader must come first", () => Forward());
        yield return new("no header", Bad, "CallHeader must come first", () => Forward(Chunk("hidden", okBytes.Length, okBytes, true)));
        yield return new("header twice", Bad, "CallHeader sent twice", () => Forward(HeaderMsg(), HeaderMsg()));
        yield return new("unexpected chunk name", Bad, "unexpected tensor 'weights'", () => Forward(HeaderMsg(), Chunk("weights", okBytes.Length, okBytes, true)));
        yield return new("total_bytes over limit", Bad, "the limit is", () => Forward(HeaderMsg(), Chunk("hidden", 1L << 40, [1, 2], false)));
        yield return new("declared more than sent", Bad, "truncated", () => Forward(HeaderMsg(), Chunk("hidden", okBytes.Length + 10, okBytes, true)));
        yield return new("sent more than declared", Bad, "more bytes than", () => Forward(HeaderMsg(), Chunk("hidden", 4, okBytes, true)));
        yield return new("stream ends mid-tensor", Bad, "middle of tensor 'hidden'", () => Forward(HeaderMsg(), Chunk("hidden", okBytes.Length, okBytes[..10], false)));
        yield return new("garbage instead of a Tensor", Bad, "not a valid Tensor message", () => Forward(HeaderMsg(), Chunk("hidden", 6, [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], true)));
        // A message past 16 MiB is refused by a server process in Security/BlockStreamCases (four kinds). Here, with
        // the TLS server inside this test process, that upload hung the client call past its deadline in 2 runs of 13
        // (never against a server process, never in plain text): a test-host artefact not yet understood.
        yield return new("too many tokens", StatusCode.ResourceExhausted, "per request", () => ForwardHidden(Hidden(100, 200)));
        // Backward.
        yield return new("backward without grad_output", Bad, "missing tensor(s): grad_output", () => Backward(ok, null));
        yield return new("backward shape mismatch", Bad, "grad_output: shape [1, 4, 64] differs", () => Backward(ok, Hidden(1, 4)));
        yield return new("backward NaN gradient", Bad, "grad_output: contains NaN", () => Backward(ok, Hidden(1, 3, fill: float.NaN)));
        // Inference: opening.
        yield return new("step before open", StatusCode.FailedPrecondition, "no session: send OpenSession first", () => Inference(Step("a", ok)));
        yield return new("double open", StatusCode.FailedPrecondition, "already open", () => Inference(Open(), Open()));
        yield return new("empty session id", Bad, "session_id is empty", () => Inference(Open(id: "")));
        yield return new("session id too long", Bad, "session_id has 129 characters", () => Inference(Open(id: new string('x', 129))));
        yield return new("batch 0", Bad, "batch_size 0", () => Inference(Open(batch: 0)));
        yield return new("batch too large", Bad, "batch_size 100000", () => Inference(Open(batch: 100000)));
        yield return new("max_length 0", Bad, "max_length 0", () => Inference(Open(maxLength: 0)));
        yield return new("max_length too large", Bad, "max_length 257 is outside [1, 256]", () => Inference(Open(maxLength: 257)));
        yield return new("open range outside span", Bad, "not inside the served span", () => Inference(Open(start: 2, end: 4)));
        yield return new("open range reversed", Bad, "start_block must be below", () => Inference(Open(start: 2, end: 0)));
        yield return new("open left_padding wrong length", Bad, "left_padding has 2 entries", () => Inference(Open(pad: [1, 1])));
        yield return new("empty request kind", Bad, "neither open nor step", () => Inference(Open(), new InferenceRequest()));
        // Inference: steps.
        yield return new("step batch mismatch", Bad, "does not match the session's batch 2", () => Inference(Open(batch: 2), Step("a", ok)));
        yield return new("step wrong hidden size", Bad, "hidden size 32", () => Inference(Open(), Step("a", Hidden(1, 1, 32))));
        yield return new("step NaN", Bad, "NaN", () => Inference(Open(), Step("a", Hidden(1, 1, fill: float.NaN))));
        yield return new("empty step_id", Bad, "step_id is empty", () => Inference(Open(), Step("", ok)));
        yield return new("hypo_ids out of range", Bad, "hypo_ids[1] = 2 is outside [0, 2)", () => Inference(Open(batch: 2), Step("a", Hidden(2, 1), Ids(0, 2))));
        yield return new("hypo_ids negative", Bad, "hypo_ids[0] = -1", () => Inference(Open(batch: 2), Step("a", Hidden(2, 1), Ids(-1, 0))));
        yield return new("hypo_ids wrong length", Bad, "hypo_ids: expected shape [2]", () => Inference(Open(batch: 2), Step("a", Hidden(2, 1), Ids(0))));
        yield return new("hypo_ids float", Bad, "hypo_ids: dtype Float32", () => Inference(Open(batch: 2), Step("a", Hidden(2, 1), TensorCodec.Encode(zeros(2)))));
        yield return new("start_from_position negative", Bad, "start_from_position -1 is negative", () => Inference(Open(), Step("a", ok, from: -1)));
        yield return new("start_from_position beyond position", StatusCode.OutOfRange, "start_from_position 4 is beyond the session position 3",
            () => Inference(Open(), Step("a", ok), Step("b", ok, from: 4)));
        yield return new("position past max_length", StatusCode.OutOfRange, "exceeds the session's max_length 4",
            () => Inference(Open(maxLength: 4), Step("a", ok), Step("b", Hidden(1, 2))));
        yield return new("repeated old step_id", StatusCode.FailedPrecondition, "step_id 'a' was already applied",
            () => Inference(Open(), Step("a", Hidden(1, 1)), Step("b", Hidden(1, 1)), Step("a", Hidden(1, 1))));
        // Not even a CallMessage: bytes that do not parse as protobuf.
        yield return new("garbage gRPC message", Bad, "not a valid CallMessage message", () => RawForward([0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]));
    }

    Task RawForward(byte[] payload) => AsAttacker(async c =>
    {
        var method = new Method<byte[], byte[]>(MethodType.DuplexStreaming, "petals.v1.BlockService", "Forward",
            Marshallers.Create(b => b, b => b), Marshallers.Create(b => b, b => b));
        using var call = c.Channel.CreateCallInvoker().AsyncDuplexStreamingCall(method, null, new CallOptions(deadline: DateTime.UtcNow.AddSeconds(60)));
        await call.RequestStream.WriteAsync(payload);
        await call.RequestStream.CompleteAsync();
        while (await call.ResponseStream.MoveNext(CancellationToken.None)) { }
    });

    [Fact]
    public async Task Hostile_requests_get_clear_errors_while_a_healthy_session_keeps_working()
    {
        var cases = Cases().ToList();
        Assert.True(cases.Count >= 30, $"only {cases.Count} cases");
        var hostileDone = new TaskCompletionSource();
        var healthy = Task.Run(() => HealthySessionAsync(hostileDone.Task));
        var failures = new List<string>();
        try
        {
            foreach (var c in cases)
            {
                try
                {
                    await CallBoundedAsync(c);
                    failures.Add($"{c.Name}: no error");
                }
                catch (RpcException e)
                {
                    output.WriteLine($"{c.Name}: {e.StatusCode} {e.Status.Detail}");
                    if (e.StatusCode != c.Code || !e.Status.Detail.Contains(c.MessagePart, StringComparison.Ordinal))
                        failures.Add($"{c.Name}: expected {c.Code} with '{c.MessagePart}', got {e.StatusCode} '{e.Status.Detail}'");
                }
                catch (TimeoutException e)
                {
                    failures.Add($"{c.Name}: {e.Message}");
                }
            }
        }
        finally
        {
            hostileDone.SetResult();
        }
        var steps = await healthy;
        Assert.True(failures.Count == 0, string.Join("\n", failures));
        Assert.True(steps >= 10, $"the healthy session made only {steps} steps");
        var info = await f.Client.Raw.InfoAsync(new InfoRequest());
        Assert.Equal(3, info.EndBlock);
        await Eventually.TrueAsync(() => f.Server.ActiveSessions == 0 && f.Server.CacheTokensLeft == PetalsSharp.Server.ServerOptions.DefaultCacheTokens);
    }

    /// <summary>
    /// Runs a case's call, bounded. Every call carries a gRPC deadline, yet a call to the TLS server inside this test
    /// process has, rarely, never ended at all (once in a full run on 2026-12-04): a heap dump held no task that could
    /// still complete it, so the whole test run waited for the blame collector's limit. The bound turns that into an
    /// answer. A call that hangs is tried once more on a fresh connection, as another attacker would: the server's
    /// handling is what is checked here, and a server that hangs on an input hangs on it twice.
    /// </summary>
    async Task CallBoundedAsync(Case c)
    {
        var bound = TimeSpan.FromSeconds(60);
        try
        {
            await c.Call().WaitAsync(bound);
        }
        catch (TimeoutException)
        {
            output.WriteLine($"{c.Name}: no end within {bound.TotalSeconds:0} s; trying once more");
            try { await c.Call().WaitAsync(bound); }
            catch (TimeoutException) { throw new TimeoutException($"no answer within {bound.TotalSeconds:0} s, twice"); }
        }
    }

    /// <summary>Steps one session until the hostile run is over; returns the number of steps, all checked against local blocks.</summary>
    async Task<int> HealthySessionAsync(Task hostileDone)
    {
        const int maxLength = 256;
        var inputs = new List<Tensor>();
        var outputs = new List<Tensor>();
        // Its own connection, as another user's would be: an attack may stall the attacker's connection (over TLS, an
        // upload the server refused can leave the connection's send window exhausted), never someone else's.
        using var own = new ServerClient(f.Server.Address);
        using (var remote = await own.OpenAsync(ServerClient.Open(1, maxLength, id: "healthy")))
        {
            int position = 0;
            while (inputs.Count < 10 || (!hostileDone.IsCompleted && position < maxLength - 1))
            {
                using var g = new Generator((ulong)(1000 + inputs.Count));
                var x = randn([1, inputs.Count == 0 ? 4 : 1, 64], generator: g).DetachFromDisposeScope();
                var (y, p) = await remote.StepAsync(x);
                inputs.Add(x);
                outputs.Add(y);
                position = p;
                await Task.Delay(5);
            }
            await remote.CloseAsync();
        }
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        using var local = new LocalBlockSession(f.Local, new SessionOptions(1, maxLength));
        for (int i = 0; i < inputs.Count; i++)
            TensorAssert.Close(local.Step(inputs[i]), outputs[i], 1e-5, 1e-5, $"healthy step {i}");
        foreach (var t in inputs.Concat(outputs)) t.Dispose();
        return inputs.Count;
    }
}
