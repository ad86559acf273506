using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Reflection;
using Grpc.Core;
using Grpc.Net.Client;
using PetalsSharp.Wire;

namespace PetalsSharp.Tests.Security;

/// <summary>
/// The one place the campaign connects to a server or a DHT node. Typed calls, hand-made messages and hand-made
/// frames all travel over channels made here, so when peer links get TLS only this file has to follow.
/// </summary>
static class CampaignChannels
{
    public static GrpcChannel Create(string address) => PeerChannels.Create(address, new PeerChannelOptions(64 << 20));

    // Grpc.Net.Client keeps a channel's transport and base address internal. Hand-made frames borrow both, so they
    // leave exactly like the channel's own calls (same handler, same scheme, later the same TLS).
    static readonly PropertyInfo Invoker = typeof(GrpcChannel).GetProperty("HttpInvoker", BindingFlags.Instance | BindingFlags.NonPublic)
        ?? throw new InvalidOperationException("GrpcChannel.HttpInvoker is gone: raw frames need another way onto the channel");

    static readonly PropertyInfo Address = typeof(GrpcChannel).GetProperty("Address", BindingFlags.Instance | BindingFlags.NonPublic)
        ?? throw new InvalidOperationException("GrpcChannel.Address is gone: raw frames need another way onto the channel");

    static readonly Marshaller<byte[]> Bytes = Marshallers.Create(b => b, b => b);

    /// <summary>A method that sends and receives raw message bytes, so a message can be anything at all.</summary>
    public static Method<byte[], byte[]> RawMethod(MethodType type, string service, string name) => new(type, service, name, Bytes, Bytes);

    /// <summary>Sends raw message bytes to a unary method (framed by the channel, so only the content is hostile).</summary>
    public static async Task<Outcome> UnaryBytesAsync(GrpcChannel channel, string service, string method, byte[] message)
    {
        var invoker = channel.CreateCallInvoker();
        await invoker.AsyncUnaryCall(RawMethod(MethodType.Unary, service, method), null,
            new CallOptions(deadline: DateTime.UtcNow.AddSeconds(30)), message);
        return Outcome.Ok($"{method} answered a hand-made message");
    }

    /// <summary>Sends raw messages on a bidirectional stream and reads until the server ends it.</summary>
    public static async Task<Outcome> StreamBytesAsync(GrpcChannel channel, string service, string method, params byte[][] messages)
    {
        var invoker = channel.CreateCallInvoker();
        using var call = invoker.AsyncDuplexStreamingCall(RawMethod(MethodType.DuplexStreaming, service, method), null,
            new CallOptions(deadline: DateTime.UtcNow.AddSeconds(30)));
        await Calls.WriteAllAsync(call.RequestStream, messages);
        while (await call.ResponseStream.MoveNext(CancellationToken.None)) { }
        return Outcome.Ok($"{method} ended normally");
    }

    /// <summary>One gRPC frame: compression flag, big-endian length (which may lie), then the bytes given.</summary>
    public static byte[] Frame(byte[] message, uint? declaredLength = null, byte flag = 0)
    {
        var frame = new byte[5 + message.Length];
        frame[0] = flag;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(frame.AsSpan(1), declaredLength ?? (uint)message.Length);
        message.CopyTo(frame, 5);
        return frame;
    }

    /// <summary>
    /// Posts a hand-made request body to <paramref name="path"/> over the channel's own transport and returns the
    /// grpc-status and grpc-message the server ended the call with.
    /// </summary>
    public static async Task<Outcome> PostFramesAsync(GrpcChannel channel, string path, HttpContent body, TimeSpan? grpcTimeout = null,
        string? grpcEncoding = null)
    {
        var invoker = (HttpMessageInvoker)Invoker.GetValue(channel)!;
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri((Uri)Address.GetValue(channel)!, path))
        {
            Version = HttpVersion.Version20, VersionPolicy = HttpVersionPolicy.RequestVersionExact, Content = body,
        };
        body.Headers.ContentType = new MediaTypeHeaderValue("application/grpc");
        request.Headers.TryAddWithoutValidation("te", "trailers");
        if (grpcTimeout is { } t) request.Headers.TryAddWithoutValidation("grpc-timeout", $"{(long)t.TotalMilliseconds}m");
        if (grpcEncoding is not null) request.Headers.TryAddWithoutValidation("grpc-encoding", grpcEncoding);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        using var reply = await invoker.SendAsync(request, cts.Token);
        // A trailers-only answer carries the status in its headers; otherwise it follows the body.
        if (Status(reply.Headers) is { } early) return early;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        try { await reply.Content.ReadAsByteArrayAsync(cts.Token); }
        catch (HttpRequestException e) when (e.InnerException is HttpProtocolException reset)
        {
            // Once a response has started, a server ends a call early by resetting its stream; gRPC over HTTP/2 maps
            // the reset's error code to the call's status (CANCEL is CANCELLED).
            return new Outcome(reset.ErrorCode switch { 0x7 => "Unavailable", 0x8 => "Cancelled", 0xB => "ResourceExhausted", _ => "Internal" },
                $"the server reset the stream (HTTP/2 error code {reset.ErrorCode}) {clock.Elapsed.TotalSeconds:F1} s into the response");
        }
        return Status(reply.TrailingHeaders) ?? new Outcome("no status", $"HTTP {(int)reply.StatusCode} without grpc-status");
    }

    static Outcome? Status(HttpHeaders headers)
    {
        if (!headers.TryGetValues("grpc-status", out var values)) return null;
        var code = (StatusCode)int.Parse(values.First(), CultureInfo.InvariantCulture);
        var message = headers.TryGetValues("grpc-message", out var m) ? Uri.UnescapeDataString(m.First()) : "";
        return code == StatusCode.OK ? Outcome.Ok(message) : new Outcome(code.ToString(), message);
    }
}

/// <summary>A request body that sends its first bytes and then stalls until released: the slow-loris client.</summary>
sealed class StallingContent(byte[] first, Task release) : HttpContent
{
    protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context)
    {
        await stream.WriteAsync(first);
        await stream.FlushAsync();
        await release;
    }

    protected override bool TryComputeLength(out long length)
    {
        length = 0;
        return false;
    }
}
