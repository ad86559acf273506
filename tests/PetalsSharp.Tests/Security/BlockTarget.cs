using System.Buffers.Binary;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using static TorchSharp.torch;
using WireTensor = PetalsSharp.Wire.V1.Tensor;

namespace PetalsSharp.Tests.Security;

/// <summary>
/// The campaign's client of the block service: calls that send whatever they are given and report how the server
/// ended them. Nothing here is cached between cases except the channels.
/// </summary>
public sealed class BlockTarget(CampaignSwarm swarm) : IDisposable
{
    public const string Service = "petals.v1.BlockService";
    public const int HiddenSize = 64, Blocks = 5;   // stories260K

    readonly Lazy<GrpcChannel> _channel = new(() => CampaignChannels.Create(swarm.Server.Address));
    readonly Lazy<GrpcChannel> _victims = new(() => CampaignChannels.Create(swarm.Server.Address));
    readonly Lazy<GrpcChannel> _frames = new(() => CampaignChannels.Create(swarm.Server.Address));

    public GrpcChannel Channel => _channel.Value;
    /// <summary>Frames that break HTTP/2 streams get a channel of their own, so no other case shares their connection.</summary>
    public GrpcChannel FrameChannel => _frames.Value;
    public BlockService.BlockServiceClient Client => new(_channel.Value);
    /// <summary>Sessions attacked by others are opened on another channel than the attacker's calls.</summary>
    public BlockService.BlockServiceClient VictimClient => new(_victims.Value);

    public static DateTime Deadline(double seconds = 30) => DateTime.UtcNow.AddSeconds(seconds);

    public async Task<Outcome> CallAsync(bool backward, IEnumerable<CallMessage> messages, bool complete = true, double deadline = 30)
    {
        using var call = backward ? Client.Backward(deadline: Deadline(deadline)) : Client.Forward(deadline: Deadline(deadline));
        await Calls.WriteAllAsync(call.RequestStream, messages, complete);
        await Calls.DrainAsync(call.ResponseStream);
        return Outcome.Ok("the call returned its result");
    }

    public Task<Outcome> ForwardAsync(WireTensor hidden, CallHeader? header = null) =>
        CallAsync(false, Messages(header ?? Header(), ("hidden", hidden)));

    public Task<Outcome> BackwardAsync(WireTensor hidden, WireTensor gradOutput) =>
        CallAsync(true, Messages(Header(), ("hidden", hidden), ("grad_output", gradOutput)));

    public async Task<Outcome> InferenceAsync(params InferenceRequest[] messages)
    {
        using var call = Client.Inference(deadline: Deadline());
        await Calls.WriteAllAsync(call.RequestStream, messages);
        await Calls.DrainAsync(call.ResponseStream);
        return Outcome.Ok("the session ended normally");
    }

    /// <summary>One step with these tensors in a fresh session of <paramref name="batch"/> rows.</summary>
    public Task<Outcome> StepAsync(WireTensor hidden, int batch = 1, WireTensor? hypoIds = null, WireTensor? prompts = null, int maxLength = 16) =>
        InferenceAsync(Open(batch, maxLength), Step("a", hidden, hypoIds, prompts));

    public async Task<Outcome> PushAsync(PushRequest request)
    {
        await Client.PushAsync(request, deadline: Deadline());
        return Outcome.Ok("the push was delivered");
    }

    /// <summary>Pushes on a PushStream; a refused push is answered on the stream with "Status: why".</summary>
    public async Task<Outcome> PushStreamAsync(params PushRequest[] requests)
    {
        using var call = Client.PushStream(deadline: Deadline());
        await call.ResponseHeadersAsync;
        foreach (var r in requests) await call.RequestStream.WriteAsync(r);
        if (!await call.ResponseStream.MoveNext(CancellationToken.None)) return Outcome.Ok("no push was refused");
        var error = call.ResponseStream.Current.Error;
        int colon = error.IndexOf(':', StringComparison.Ordinal);
        await call.RequestStream.CompleteAsync();
        return colon < 0 ? new Outcome("unparsed", error) : new Outcome(error[..colon], error[(colon + 1)..].Trim());
    }

    public static CallHeader Header(int start = 0, int end = Blocks) => new() { StartBlock = start, EndBlock = end };

    public static IEnumerable<CallMessage> Messages(CallHeader header, params (string Name, WireTensor Tensor)[] tensors) =>
        new[] { new CallMessage { Header = header } }.Concat(tensors.SelectMany(t => TensorChunks.Split(t.Name, t.Tensor)));

    public static CallMessage Chunk(string name, long total, ReadOnlySpan<byte> part, bool last) =>
        new() { Chunk = new TensorChunk { Name = name, TotalBytes = total, Part = ByteString.CopyFrom(part), Last = last } };

    public static InferenceRequest Open(int batch = 1, int maxLength = 16, string? id = null, string token = "", int start = 0, int end = Blocks) =>
        new()
        {
            Open = new OpenSession
            {
                SessionId = id ?? Guid.NewGuid().ToString("N"), StartBlock = start, EndBlock = end, BatchSize = batch, MaxLength = maxLength,
                PushToken = token,
            },
        };

    public static InferenceRequest Step(string stepId, WireTensor? hidden, WireTensor? hypoIds = null, WireTensor? prompts = null, int? from = null)
    {
        var step = new InferenceStep { StepId = stepId, Hidden = hidden, HypoIds = hypoIds, Prompts = prompts };
        if (from is { } p) step.StartFromPosition = p;
        return new InferenceRequest { Step = step };
    }

    /// <summary>Honest float32 hidden states [b, t, 64] filled with one value, encoded with <paramref name="c"/>.</summary>
    public static WireTensor Hidden(long b, long t, float fill = 0.25f, Compression c = Compression.None)
    {
        using var x = full(new[] { b, t, (long)HiddenSize }, fill);
        return TensorCodec.Encode(x, c);
    }

    public static WireTensor Ids(params long[] ids)
    {
        using var t = tensor(ids);
        return TensorCodec.Encode(t);
    }

    /// <summary>A tensor message exactly as given, however inconsistent.</summary>
    public static WireTensor Raw(long[] shape, DType dtype = DType.Float32, Compression c = Compression.None, byte[]? data = null, byte[]? scales = null)
    {
        var t = new WireTensor { Dtype = dtype, Compression = c, Data = ByteString.CopyFrom(data ?? []) };
        t.Shape.AddRange(shape);
        if (scales is not null) t.Scales = ByteString.CopyFrom(scales);
        return t;
    }

    public static byte[] Float32s(int count, Func<int, float> value)
    {
        var b = new byte[count * 4];
        for (int i = 0; i < count; i++) BinaryPrimitives.WriteSingleLittleEndian(b.AsSpan(i * 4), value(i));
        return b;
    }

    /// <summary>
    /// The start of a serialized float32 tensor that declares <paramref name="shape"/> and a payload of
    /// <paramref name="dataBytes"/>, followed by <paramref name="sent"/> bytes of it: what an upload's first chunk holds.
    /// </summary>
    public static byte[] DeclaredTensor(long[] shape, int dataBytes, int sent)
    {
        var head = new WireTensor { Dtype = DType.Float32 };
        head.Shape.AddRange(shape);
        using var stream = new MemoryStream();
        head.WriteTo(stream);
        var coded = new CodedOutputStream(stream, leaveOpen: true);
        coded.WriteTag(WireTensor.DataFieldNumber, WireFormat.WireType.LengthDelimited);
        coded.WriteLength(dataBytes);
        coded.Flush();
        stream.Write(new byte[sent]);
        return stream.ToArray();
    }

    public void Dispose()
    {
        foreach (var c in new[] { _channel, _victims, _frames })
            if (c.IsValueCreated) c.Value.Dispose();
    }
}
