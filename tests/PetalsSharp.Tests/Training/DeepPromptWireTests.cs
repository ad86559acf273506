using Grpc.Core;
using PetalsSharp.Tests.Server;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using Xunit;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;
using WireTensor = PetalsSharp.Wire.V1.Tensor;

namespace PetalsSharp.Tests.Training;

/// <summary>Deep prompts on the wire: a server applies well-formed ones and refuses malformed ones with INVALID_ARGUMENT.</summary>
public sealed class DeepPromptWireTests(ServerFixture f) : IClassFixture<ServerFixture>
{
    static WireTensor Encode(Tensor t) => TensorCodec.Encode(t);

    Task<(WireTensor Tensor, int Chunks)> Forward(Tensor hidden, Tensor prompts, int start = 0, int end = 3, bool promptsLast = false)
    {
        var header = ServerClient.Header(start, end);
        header.WithPrompts = true;
        (string, WireTensor)[] tensors = promptsLast
            ? [("hidden", Encode(hidden)), ("prompts", Encode(prompts))]
            : [("prompts", Encode(prompts)), ("hidden", Encode(hidden))];
        return f.Client.CallAsync(false, ServerClient.Messages(header, tensors), "hidden");
    }

    [Fact]
    public async Task Prompts_may_follow_hidden_and_are_refused_unless_the_header_announces_them()
    {
        manual_seed(9);
        var hidden = randn(1, 4, 64);
        var prompts = randn(2, 1, 2, 64);
        var first = TensorCodec.Decode((await Forward(hidden, prompts, 0, 2)).Tensor, "first");
        var last = TensorCodec.Decode((await Forward(hidden, prompts, 0, 2, promptsLast: true)).Tensor, "last");
        Assert.True(TensorAssert.MaxAbsDiff(first, last) == 0);

        // Without with_prompts, a "prompts" tensor is an unexpected one: refused, never silently ignored.
        var e = await Assert.ThrowsAsync<RpcException>(() => f.Client.CallAsync(false,
            ServerClient.Messages(ServerClient.Header(0, 2), ("prompts", Encode(prompts)), ("hidden", Encode(hidden))), "hidden"));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("prompts", e.Status.Detail);
    }

    [Fact]
    public async Task Forward_with_prompts_matches_local_blocks()
    {
        manual_seed(8);
        var hidden = randn(2, 5, 64);
        var prompts = randn(2, 1, 3, 64);
        var reply = TensorCodec.Decode((await Forward(hidden, prompts, 1, 3)).Tensor, "reply");
        using var slice = f.Local.Slice(1, 3);
        using var noGrad = no_grad();
        var expected = slice.Forward(hidden, new PetalsSharp.Models.ForwardOptions(Prompts: prompts));
        Assert.True(TensorAssert.MaxAbsDiff(expected, reply) <= 1e-5);
        Assert.True(TensorAssert.MaxAbsDiff(slice.Forward(hidden), reply) > 1e-3, "the prompts must change the output");
    }

    public static TheoryData<long[], string> BadShapes => new()
    {
        { new long[] { 2, 1, 3, 64 }, "the call runs 3" },
        { new long[] { 3, 3, 3, 64 }, "batch must be 1 or 2" },
        { new long[] { 3, 1, 6, 64 }, "prefix length must be in [1, 5]" },
        { new long[] { 3, 1, 3, 32 }, "hidden size must be 64" },
        { new long[] { 3, 3, 64 }, "rank 3" },
    };

    [Theory]
    [MemberData(nameof(BadShapes))]
    public async Task Malformed_prompts_are_invalid_argument(long[] shape, string message)
    {
        var e = await Assert.ThrowsAsync<RpcException>(() => Forward(randn(2, 5, 64), randn(shape)));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains(message, e.Status.Detail);
    }

    [Fact]
    public async Task Non_finite_prompts_and_a_misplaced_inference_prompt_are_refused()
    {
        var e = await Assert.ThrowsAsync<RpcException>(() => Forward(randn(2, 5, 64), full(new long[] { 3, 1, 2, 64 }, float.NaN)));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("prompts", e.Status.Detail);

        using var stream = await f.Client.OpenAsync(ServerClient.Open(1, 16, id: "deep-wire"));
        var step = InferenceStream.Step("s1", randn(1, 2, 64));
        step.Prompts = Encode(randn(3, 1, 4, 64));                                  // 4 prompt positions, 2 tokens
        var e2 = await Assert.ThrowsAsync<RpcException>(() => stream.SendAsync(step));
        Assert.Equal(StatusCode.InvalidArgument, e2.StatusCode);
        Assert.Contains("prefix length", e2.Status.Detail);
    }
}
