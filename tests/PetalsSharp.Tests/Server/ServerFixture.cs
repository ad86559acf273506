using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;
using WireTensor = PetalsSharp.Wire.V1.Tensor;

namespace PetalsSharp.Tests.Server;

/// <summary>A real BlockServer over llama-gqa on 127.0.0.1 (ephemeral port), a gRPC client and local blocks to compare with.</summary>
public class ServerFixture : Xunit.IAsyncLifetime
{
    public BlockServer Server { get; private set; } = null!;
    public ServerClient Client { get; private set; } = null!;
    public LocalBlockStack Local { get; private set; } = null!;
    Checkpoint? _checkpoint;

    protected virtual ServerOptions Options => new()
    {
        ModelDir = TestData.Path("llama-gqa"), StartBlock = 0, EndBlock = 3, Host = "127.0.0.1", Port = 0,
    };

    public async Task InitializeAsync()
    {
        Server = BlockServer.Load(Options);
        await Server.StartAsync();
        Client = new ServerClient(Server.Address);
        _checkpoint = Checkpoint.Open(TestData.Path("llama-gqa"));
        Local = _checkpoint.LoadBlocks(0, 3);
    }

    public async Task DisposeAsync()
    {
        Client?.Dispose();
        if (Server is not null) await Server.DisposeAsync();
        Local?.Dispose();
        _checkpoint?.Dispose();
    }
}

/// <summary>
/// A server with a small cache (64 tokens across the span), for budget tests. Its tests play one client filling the
/// whole cache, so the per-client share is off (CacheShareTests covers it).
/// </summary>
public sealed class SmallCacheFixture : ServerFixture
{
    protected override ServerOptions Options => base.Options with { CacheTokens = 64, MaxCacheShare = 1 };
}

/// <summary>A raw gRPC client with helpers that speak the chunked Forward/Backward protocol.</summary>
public sealed class ServerClient : IDisposable
{
    readonly GrpcChannel _channel;

    /// <param name="source">
    /// Local address to connect from, e.g. 127.0.0.2: Linux routes all of 127/8 on lo, so one machine can play
    /// clients at different peer addresses.
    /// </param>
    public ServerClient(string address, System.Net.IPAddress? source = null)
    {
        _channel = TestChannels.Create(address, source);
        Raw = new BlockService.BlockServiceClient(_channel);
    }

    public BlockService.BlockServiceClient Raw { get; }
    public GrpcChannel Channel => _channel;

    public static CallHeader Header(int start, int end, Compression c = Compression.None, params int[] leftPadding)
    {
        var h = new CallHeader { StartBlock = start, EndBlock = end, OutputCompression = c };
        h.LeftPadding.AddRange(leftPadding);
        return h;
    }

    /// <summary>Sends the messages of a Forward or Backward call; returns the reply tensor and how many chunks carried it.</summary>
    public async Task<(WireTensor Tensor, int Chunks)> CallAsync(bool backward, IEnumerable<CallMessage> messages, string replyName)
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);   // a hang fails the test instead of stalling the run
        using var call = backward ? Raw.Backward(deadline: deadline) : Raw.Forward(deadline: deadline);
        try
        {
            foreach (var m in messages) await call.RequestStream.WriteAsync(m);
            await call.RequestStream.CompleteAsync();
        }
        catch (RpcException)
        {
            // The server may answer (and end the call) before reading everything we send: its status is in the reply.
        }
        var assembler = new TensorAssembler([replyName], 1L << 30);
        int chunks = 0;
        await foreach (var m in call.ResponseStream.ReadAllAsync())
        {
            assembler.Add(m.Chunk);
            chunks++;
        }
        assembler.RequireComplete();
        return (assembler.Completed[replyName], chunks);
    }

    public static IEnumerable<CallMessage> Messages(CallHeader header, params (string Name, WireTensor Tensor)[] tensors) =>
        new[] { new CallMessage { Header = header } }.Concat(tensors.SelectMany(t => TensorChunks.Split(t.Name, t.Tensor)));

    public async Task<Tensor> ForwardAsync(Tensor hidden, CallHeader header, Compression input = Compression.None) =>
        TensorCodec.Decode((await CallAsync(false, Messages(header, ("hidden", TensorCodec.Encode(hidden, input))), "hidden")).Tensor, "reply");

    public async Task<Tensor> BackwardAsync(Tensor hidden, Tensor gradOutput, CallHeader header) =>
        TensorCodec.Decode((await CallAsync(true, Messages(header, ("hidden", TensorCodec.Encode(hidden)),
            ("grad_output", TensorCodec.Encode(gradOutput))), "grad_input")).Tensor, "reply");

    /// <summary>Opens an inference session and returns the stream after the `opened` reply.</summary>
    public async Task<InferenceStream> OpenAsync(OpenSession open)
    {
        var call = Raw.Inference();
        await call.RequestStream.WriteAsync(new InferenceRequest { Open = open });
        if (!await call.ResponseStream.MoveNext(CancellationToken.None)) throw new InvalidOperationException("no `opened` reply");
        if (call.ResponseStream.Current.KindCase != InferenceReply.KindOneofCase.Opened) throw new InvalidOperationException("expected `opened`");
        return new InferenceStream(call, call.ResponseStream.Current.Opened);
    }

    public static OpenSession Open(int batch, int maxLength, int start = 0, int end = 3, string id = "s1") =>
        new() { SessionId = id, StartBlock = start, EndBlock = end, BatchSize = batch, MaxLength = maxLength };

    public void Dispose() => _channel.Dispose();
}

/// <summary>One inference stream after OpenSession.</summary>
public sealed class InferenceStream(AsyncDuplexStreamingCall<InferenceRequest, InferenceReply> call, SessionOpened opened) : IDisposable
{
    int _steps;

    public SessionOpened Opened => opened;
    public AsyncDuplexStreamingCall<InferenceRequest, InferenceReply> Call => call;

    public async Task<StepResult> SendAsync(InferenceStep step)
    {
        await call.RequestStream.WriteAsync(new InferenceRequest { Step = step });
        if (!await call.ResponseStream.MoveNext(CancellationToken.None)) throw new InvalidOperationException("stream ended without a reply");
        return call.ResponseStream.Current.Result;
    }

    public static InferenceStep Step(string id, Tensor hidden, Tensor? hypoIds = null, int? startFrom = null)
    {
        var s = new InferenceStep { StepId = id, Hidden = TensorCodec.Encode(hidden) };
        if (hypoIds is not null) s.HypoIds = TensorCodec.Encode(hypoIds);
        if (startFrom is { } p) s.StartFromPosition = p;
        return s;
    }

    public async Task<(Tensor Hidden, int Position)> StepAsync(Tensor hidden, Tensor? hypoIds = null, int? startFrom = null)
    {
        var r = await SendAsync(Step($"step-{++_steps}", hidden, hypoIds, startFrom));
        return (TensorCodec.Decode(r.Hidden, "reply"), r.Position);
    }

    /// <summary>Closes our side and waits for the server to end the call.</summary>
    public async Task CloseAsync()
    {
        await call.RequestStream.CompleteAsync();
        while (await call.ResponseStream.MoveNext(CancellationToken.None)) { }
    }

    public void Dispose() => call.Dispose();
}

static class Bytes
{
    public static ByteString Of(params byte[] b) => ByteString.CopyFrom(b);
}

/// <summary>A server that waits only 1 s for a Forward/Backward request's tensors.</summary>
public sealed class ShortReadTimeoutFixture : ServerFixture
{
    protected override ServerOptions Options => base.Options with { RequestReadTimeout = TimeSpan.FromSeconds(1) };
}

/// <summary>A server whose Forward/Backward calls may hold only 256 KiB of received tensors in all.</summary>
public sealed class SmallRequestMemoryFixture : ServerFixture
{
    protected override ServerOptions Options => base.Options with { MaxRequestMemoryBytes = 256 << 10 };
}
