using PetalsSharp.Models;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using Xunit;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace PetalsSharp.Tests.Server;

/// <summary>What a server computes equals what the same blocks compute locally.</summary>
public sealed class ServerComputeTests(ServerFixture f) : IClassFixture<ServerFixture>
{
    // Async tests keep no dispose scope or grad mode across an await: both are thread-local in TorchSharp, and the
    // continuation may run on a thread another test is using. Local compute goes through this synchronous helper.
    static Tensor NoGrad(Func<Tensor> compute)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        return compute().MoveToOuterDisposeScope();
    }

    static Tensor Random(long seed, params long[] shape)
    {
        using var g = new Generator((ulong)seed);
        return randn(shape, generator: g);
    }

    [Fact]
    public async Task Info_describes_the_span_and_only_the_span_was_loaded()
    {
        var info = await f.Client.Raw.InfoAsync(new InfoRequest());
        Assert.Equal(Protocol.Version, info.ProtocolVersion);
        Assert.False(string.IsNullOrEmpty(info.SoftwareVersion));
        Assert.Equal("llama-gqa", info.ModelName);
        Assert.Equal("llama-gqa", info.DhtPrefix);
        Assert.Equal((0, 3, 3, 64), (info.StartBlock, info.EndBlock, info.NumBlocks, info.HiddenSize));
        Assert.Equal("float32", info.WeightsDtype);
        Assert.Equal(ServerOptionsDefaults.CacheTokens, info.CacheTokensLeft);
        Assert.Equal(TensorCodec.Supported, info.Compressions);
        Assert.Equal(3, info.BlockFingerprints.Count);
        using var ckpt = Checkpoint.Open(TestData.Path("llama-gqa"));
        Assert.Equal(Enumerable.Range(0, 3).Select(ckpt.BlockFingerprint), info.BlockFingerprints);
        Assert.Equal(Checkpoint.SpanFingerprint(info.BlockFingerprints), info.WeightsFingerprint);
        Assert.Equal(Protocol.DefaultMaxMessageBytes, info.MaxMessageBytes);
        Assert.Equal(256, info.MaxSessionLength);   // min(max_position_embeddings 256, 8192)
        Assert.Equal(9 * 3, f.Server.LoadedTensorCount);
    }

    [Fact]
    public async Task A_server_of_a_sub_span_reads_only_its_blocks()
    {
        await using var server = PetalsSharp.Server.BlockServer.Load(new PetalsSharp.Server.ServerOptions
        {
            ModelDir = TestData.Path("llama-gqa"), StartBlock = 1, EndBlock = 2, Host = "127.0.0.1", Port = 0, ModelName = "a.b c",
        });
        Assert.Equal(9, server.LoadedTensorCount);
        await server.StartAsync();
        using var client = new ServerClient(server.Address);
        var info = await client.Raw.InfoAsync(new InfoRequest());
        Assert.Equal((1, 2, "a-b-c"), (info.StartBlock, info.EndBlock, info.DhtPrefix));
    }

    [Theory]
    [InlineData(0, 3)]
    [InlineData(1, 3)]
    [InlineData(2, 3)]
    [InlineData(0, 1)]
    public async Task Forward_equals_local_blocks(int start, int end)
    {
        var x = Random(start * 10 + end, 2, 7, 64);
        var actual = await f.Client.ForwardAsync(x, ServerClient.Header(start, end));
        using var slice = f.Local.Slice(start, end);
        TensorAssert.Close(NoGrad(() => slice.Forward(x)), actual, 1e-5, 1e-5, $"forward [{start}, {end})");
    }

    [Fact]
    public async Task Forward_with_left_padding_equals_local()
    {
        var x = Random(5, 2, 6, 64);
        var actual = await f.Client.ForwardAsync(x, ServerClient.Header(0, 3, Compression.None, 2, 0));
        TensorAssert.Close(NoGrad(() => f.Local.Forward(x, new ForwardOptions([2, 0]))), actual, 1e-5, 1e-5, "padded forward");
    }

    [Fact]
    public async Task A_large_forward_travels_in_several_chunks_both_ways()
    {
        var x = Random(6, 48, 200, 64);                                 // 2.4 MiB of float32
        var wire = TensorCodec.Encode(x);
        Assert.True(TensorChunks.Split("hidden", wire).Count() >= 3);
        var (reply, chunks) = await f.Client.CallAsync(false, ServerClient.Messages(ServerClient.Header(0, 3), ("hidden", wire)), "hidden");
        Assert.True(chunks >= 3, $"reply came in {chunks} chunk(s)");
        TensorAssert.Close(NoGrad(() => f.Local.Forward(x)), TensorCodec.Decode(reply, "reply"), 1e-5, 1e-5, "large forward");
    }

    [Theory]
    [InlineData(0, 3)]
    [InlineData(1, 2)]
    public async Task Backward_equals_local_autograd(int start, int end)
    {
        var x = Random(7, 2, 5, 64);
        var g = Random(8, 2, 5, 64);
        var actual = await f.Client.BackwardAsync(x, g, ServerClient.Header(start, end));
        using var slice = f.Local.Slice(start, end);
        var expected = LocalGrad(slice, x, g);
        TensorAssert.Close(expected, actual, 1e-5, 1e-5, "grad_input");
    }

    static Tensor LocalGrad(LocalBlockStack slice, Tensor x, Tensor g)
    {
        using var scope = NewDisposeScope();
        using var grad = enable_grad();
        var input = x.detach().requires_grad_(true);
        return autograd.grad([slice.Forward(input)], [input], [g])[0].MoveToOuterDisposeScope();
    }

    [Fact]
    public async Task Each_compression_round_trips_within_its_bound()
    {
        var x = Random(9, 2, 9, 64);
        var expected = NoGrad(() => f.Local.Forward(x));
        TensorAssert.Close(expected, await f.Client.ForwardAsync(x, ServerClient.Header(0, 3, Compression.None)), 1e-5, 1e-5, "none");
        // The input travels compressed too, so the bound covers both directions' rounding.
        var xf16 = TensorCodec.Decode(TensorCodec.Encode(x, Compression.Float16), "x");
        TensorAssert.Close(NoGrad(() => f.Local.Forward(xf16)), await f.Client.ForwardAsync(x, ServerClient.Header(0, 3, Compression.Float16), Compression.Float16), 1e-6, 1e-3, "float16");
        TensorAssert.Close(expected, await f.Client.ForwardAsync(x, ServerClient.Header(0, 3, Compression.Bfloat16)), 1e-6, 1e-2, "bfloat16");
        var int8 = await f.Client.ForwardAsync(x, ServerClient.Header(0, 3, Compression.Int8Blockwise));
        var flat = expected.flatten();
        var absmax = flat.view(-1, TensorCodec.BlockSize).abs().amax([1], keepdim: true);    // 2·9·64 is a multiple of 64
        var error = (int8.flatten() - flat).abs().view(-1, TensorCodec.BlockSize);
        Assert.True((error <= absmax / 127 + 1e-6).all().item<bool>(), "int8 error exceeds absmax/127 in some block");
    }

    [Fact]
    public async Task Inference_steps_equal_a_local_session_including_rollback_and_hypo_ids()
    {
        using var local = new LocalBlockSession(f.Local, new SessionOptions(2, 32));
        using var remote = await f.Client.OpenAsync(ServerClient.Open(2, 32, id: "parity"));
        async Task Check(string what, Tensor h, Tensor? hypo = null, int? startFrom = null)
        {
            var expected = NoGrad(() => local.Step(h, new StepOptions(hypo, startFrom)));
            var (actual, position) = await remote.StepAsync(h, hypo, startFrom);
            TensorAssert.Close(expected, actual, 1e-5, 1e-5, what);
            Assert.Equal(local.Position, position);
        }
        await Check("prefill", Random(10, 2, 6, 64));
        for (int i = 0; i < 4; i++) await Check($"step {i}", Random(11 + i, 2, 1, 64));
        await Check("rollback", Random(20, 2, 2, 64), startFrom: 5);
        await Check("hypo_ids", Random(21, 2, 1, 64), hypo: tensor(new long[] { 1, 1 }));
        await Check("rollback+hypo", Random(22, 2, 3, 64), hypo: tensor(new long[] { 1, 0 }), startFrom: 2);
        await remote.CloseAsync();
    }

    [Fact]
    public async Task A_repeated_step_id_is_answered_again_but_not_reapplied()
    {
        using var remote = await f.Client.OpenAsync(ServerClient.Open(1, 16, id: "dup"));
        var step = InferenceStream.Step("same", Random(30, 1, 3, 64));
        var first = await remote.SendAsync(step);
        var again = await remote.SendAsync(step);
        Assert.Equal(3, first.Position);
        Assert.Equal(3, again.Position);
        Assert.Equal(first.Hidden, again.Hidden);
        var empty = await remote.SendAsync(InferenceStream.Step("empty", zeros(1, 0, 64)));
        Assert.Equal(3, empty.Position);
        Assert.Equal(new long[] { 1, 0, 64 }, empty.Hidden.Shape);
        await remote.CloseAsync();
    }

    [Fact]
    public async Task Sessions_are_counted_and_their_cache_returned()
    {
        var before = f.Server.CacheTokensLeft;
        using (var remote = await f.Client.OpenAsync(ServerClient.Open(2, 100, id: "count")))
        {
            Assert.Equal(before - 2 * 112, remote.Opened.CacheTokensLeft);   // max_length 100 is promised as 7 pages a row
            Assert.Equal(0, f.Server.Current!.CacheBudget.HeldSlots);          // but holds no memory before a step
            await remote.StepAsync(randn(2, 20, 64));
            Assert.Equal(2 * 2 * 16 * (f.Server.End - f.Server.Start), f.Server.Current!.CacheBudget.HeldSlots);   // two pages a row and block
            await remote.CloseAsync();
        }
        await Eventually.TrueAsync(() => f.Server.ActiveSessions == 0 && f.Server.CacheTokensLeft == before);
    }
}

static class ServerOptionsDefaults
{
    public const long CacheTokens = PetalsSharp.Server.ServerOptions.DefaultCacheTokens;
}

/// <summary>Polls a condition that becomes true once the server has finished a call's cleanup.</summary>
static class Eventually
{
    public static async Task TrueAsync(Func<bool> condition, int timeoutMs = 10000)
    {
        var deadline = Environment.TickCount64 + timeoutMs;
        while (!condition())
        {
            if (Environment.TickCount64 > deadline) Assert.Fail("condition not met within the timeout");
            await Task.Delay(20);
        }
    }
}
