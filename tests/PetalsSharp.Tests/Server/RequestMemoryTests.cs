using Google.Protobuf;
using Grpc.Core;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Server;

/// <summary>
/// Received Forward/Backward tensors count against one server-wide limit: a request bigger than it, or one that
/// arrives while stalled requests hold the room, gets RESOURCE_EXHAUSTED; the room comes back when calls end.
/// </summary>
public sealed class RequestMemoryTests(SmallRequestMemoryFixture f) : IClassFixture<SmallRequestMemoryFixture>
{
    /// <summary>Opens a Forward that declares a tensor of <paramref name="tokens"/> × 64 floats and sends 16 bytes of it.</summary>
    async Task<AsyncDuplexStreamingCall<CallMessage, CallMessage>> StallAsync(int tokens)
    {
        var call = f.Client.Raw.Forward(deadline: DateTime.UtcNow.AddSeconds(60));
        await call.RequestStream.WriteAsync(new CallMessage { Header = ServerClient.Header(0, 3) });
        using var x = ones(1, tokens, 64);
        var first = TensorChunks.Split("hidden", TensorCodec.Encode(x, Compression.None)).First().Chunk.Clone();
        first.Part = ByteString.CopyFrom(first.Part.Span[..16]);
        first.Last = false;
        await call.RequestStream.WriteAsync(new CallMessage { Chunk = first });
        return call;
    }

    async Task WaitForEmptyAsync()
    {
        for (int i = 0; i < 100 && f.Server.RequestMemory.UsedBytes != 0; i++) await Task.Delay(50);
        Assert.Equal(0, f.Server.RequestMemory.UsedBytes);
    }

    [Fact]
    public async Task Requests_past_the_limit_are_refused_and_the_room_returns_when_calls_end()
    {
        // One request bigger than the whole limit (1100 × 64 floats ≈ 275 KiB).
        using var large = ones(1, 1100, 64);
        var big = await Assert.ThrowsAsync<RpcException>(() => f.Client.ForwardAsync(large, ServerClient.Header(0, 3)));
        Assert.Equal(StatusCode.ResourceExhausted, big.StatusCode);
        Assert.Contains("limit of 0.25 MB", big.Status.Detail);
        await WaitForEmptyAsync();

        // A stalled request holds ~200 KiB, so a second one of the same size does not fit.
        var stalled = await StallAsync(800);
        for (int i = 0; i < 100 && f.Server.RequestMemory.UsedBytes == 0; i++) await Task.Delay(50);
        Assert.True(f.Server.RequestMemory.UsedBytes > 200_000);
        using (var second = await StallAsync(800))
        {
            var e = await Assert.ThrowsAsync<RpcException>(async () => await second.ResponseStream.MoveNext(CancellationToken.None));
            Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
        }

        // The stalled client goes away: its room comes back and a normal request is served.
        stalled.Dispose();
        await WaitForEmptyAsync();
        using var hidden = randn(1, 500, 64, generator: new Generator(9));
        using var got = await f.Client.ForwardAsync(hidden, ServerClient.Header(0, 3));
        Assert.Equal(new long[] { 1, 500, 64 }, got.shape);
        await WaitForEmptyAsync();
    }
}
