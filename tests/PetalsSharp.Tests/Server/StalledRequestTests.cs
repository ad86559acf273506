using Google.Protobuf;
using Grpc.Core;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using Xunit;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace PetalsSharp.Tests.Server;

/// <summary>
/// A client that stops sending in the middle of a Forward or Backward request gets DEADLINE_EXCEEDED after the
/// server's read timeout, instead of holding the call (and its half-assembled tensor) open; others are served.
/// </summary>
public sealed class StalledRequestTests(ShortReadTimeoutFixture f) : IClassFixture<ShortReadTimeoutFixture>
{
    [Theory]
    [InlineData(false, false)]
    [InlineData(false, true)]
    [InlineData(true, true)]
    public async Task A_stalled_request_times_out_and_the_server_keeps_serving(bool backward, bool halfATensor)
    {
        using var call = backward ? f.Client.Raw.Backward(deadline: DateTime.UtcNow.AddSeconds(30))
            : f.Client.Raw.Forward(deadline: DateTime.UtcNow.AddSeconds(30));
        await call.RequestStream.WriteAsync(new CallMessage { Header = ServerClient.Header(0, 3) });
        if (halfATensor)
        {
            using var x = ones(1, 4, 64);
            var wire = TensorCodec.Encode(x, Compression.None);
            var first = TensorChunks.Split("hidden", wire).First().Chunk.Clone();
            first.Part = ByteString.CopyFrom(first.Part.Span[..Math.Min(16, first.Part.Length)]);
            first.Last = false;
            await call.RequestStream.WriteAsync(new CallMessage { Chunk = first });
        }
        // ...and then nothing: the request stream stays open.
        var started = DateTime.UtcNow;
        var e = await Assert.ThrowsAsync<RpcException>(async () => await call.ResponseStream.MoveNext(CancellationToken.None));
        Assert.Equal(StatusCode.DeadlineExceeded, e.StatusCode);
        Assert.Contains("arrived within 1 s", e.Status.Detail);
        Assert.True(DateTime.UtcNow - started < TimeSpan.FromSeconds(20), "the server's timeout, not the client's deadline, ended the call");

        // No dispose scope or no_grad across the await: the test may resume on another thread.
        using var hidden = randn(1, 3, 64, generator: new Generator(4));
        using var expected = Local(hidden);
        using var got = await f.Client.ForwardAsync(hidden, ServerClient.Header(0, 3));
        TensorAssert.Close(expected, got, 1e-4, 1e-4, "forward after the stall");
    }

    Tensor Local(Tensor hidden)
    {
        using var noGrad = no_grad();
        return f.Local.Forward(hidden);
    }
}
