using Grpc.Core;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Tests.Server;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Adapters;

/// <summary>An in-process server over llama-gqa that holds the adapter "tiny".</summary>
public sealed class AdapterServerFixture : ServerFixture
{
    static readonly Lazy<string> Dir = new(() => TestAdapter.Write(TestAdapter.NewDir("tiny"), seed: 9));

    public string AdapterDir => Dir.Value;

    protected override ServerOptions Options => base.Options with { Adapters = [$"tiny={Dir.Value}"] };
}

/// <summary>
/// Raw gRPC: active_adapter picks the adapter per call; an unknown one is FAILED_PRECONDITION naming it and what the
/// server holds, and the server keeps serving.
/// </summary>
public sealed class AdapterServerTests(AdapterServerFixture f) : IClassFixture<AdapterServerFixture>
{
    static CallHeader Header(string adapter) => new() { StartBlock = 0, EndBlock = 3, ActiveAdapter = adapter };

    [Fact]
    public async Task Unknown_adapter_is_refused_clearly_and_the_server_keeps_serving()
    {
        using var mergedCkpt = Checkpoint.Open(TestAdapter.WriteMerged(f.AdapterDir));
        using var merged = mergedCkpt.LoadBlocks(0, 3);
        var x = randn(1, 4, 64);

        var e = await Assert.ThrowsAsync<RpcException>(() => f.Client.ForwardAsync(x, Header("nope")));
        Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
        Assert.Contains("active_adapter 'nope' is not loaded on this server (it holds: tiny)", e.Status.Detail);

        var b = await Assert.ThrowsAsync<RpcException>(() => f.Client.BackwardAsync(x, randn(1, 4, 64), Header("nope")));
        Assert.Equal(StatusCode.FailedPrecondition, b.StatusCode);

        var open = ServerClient.Open(1, 8);
        open.ActiveAdapter = "nope";
        var s = await Assert.ThrowsAsync<RpcException>(() => f.Client.OpenAsync(open));
        Assert.Equal(StatusCode.FailedPrecondition, s.StatusCode);
        Assert.Contains("active_adapter 'nope'", s.Status.Detail);

        // Still serving: with the adapter, and without it. Grad mode is per thread, so no no_grad scope spans an await.
        var withAdapter = NoGrad(() => merged.Forward(x));
        var without = NoGrad(() => f.Local.Forward(x));
        TensorAssert.Close(withAdapter, await f.Client.ForwardAsync(x, Header("tiny")), 1e-4, 1e-4, "forward with adapter");
        TensorAssert.Close(without, await f.Client.ForwardAsync(x, Header("")), 1e-5, 1e-5, "forward without adapter");
        open.ActiveAdapter = "tiny";
        using var stream = await f.Client.OpenAsync(open);
        var (y, _) = await stream.StepAsync(x);
        TensorAssert.Close(withAdapter, y, 1e-4, 1e-4, "session step with adapter");
        await stream.CloseAsync();
    }

    static TorchSharp.torch.Tensor NoGrad(Func<TorchSharp.torch.Tensor> compute)
    {
        using var noGrad = no_grad();
        return compute();
    }

    [Fact]
    public async Task Info_lists_the_adapters()
    {
        var info = await f.Client.Raw.InfoAsync(new InfoRequest());
        Assert.Equal(["tiny"], info.Adapters);
    }
}
