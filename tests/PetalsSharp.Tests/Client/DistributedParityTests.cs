using PetalsSharp.Client;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Tests.Swarm;
using PetalsSharp.Wire.V1;
using Xunit;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace PetalsSharp.Tests.Client;

/// <summary>
/// Servers in their own processes give what the local model gives (acceptance 1–3 of the serving issue). No dispose
/// scope here: scopes are per thread and these tests resume on other threads after awaits.
/// </summary>
[Trait("Category", "Processes")]
[Collection(LlamaSwarmCollection.Name)]
public sealed class DistributedParityTests(LlamaSwarm swarm)
{
    static readonly Reference Ref = Reference.Load("llama-gqa");

    public static TheoryData<int> Chains => new() { 2, 3 };

    IEnumerable<string> Peers(int servers) => servers == 2 ? swarm.TwoPeers : swarm.ThreePeers;

    [Theory]
    [MemberData(nameof(Chains))]
    public async Task Logits_match_local_within_1e5_and_the_route_uses_every_server(int servers)
    {
        var routes = new List<string>();
        using var lm = await swarm.ConnectAsync(Peers(servers), new RemoteOptions { OnRoute = routes.Add });
        using var local = CausalLM.Load(LlamaSwarm.ModelDir);
        var ids = Ref.Longs("input_ids");
        var remote = lm.Forward(ids);
        Assert.True(TensorAssert.MaxAbsDiff(local.Forward(ids), remote) <= 1e-5);
        TensorAssert.Close(Ref.Floats("logits"), remote, 1e-3, 1e-4, "logits vs HF");
        Assert.Equal(servers, routes[^1].Split(' ').Length - 1);
    }

    [Theory]
    [InlineData(2, true)]
    [InlineData(3, true)]
    [InlineData(3, false)]
    public async Task Greedy_tokens_equal_the_fixture(int servers, bool push)
    {
        using var lm = await swarm.ConnectAsync(Peers(servers), new RemoteOptions { UseServerToServer = push });
        var result = await lm.GenerateAsync(Ref.IdRows("generation.prompt_ids"), new GenerationOptions { MaxNewTokens = 12, IgnoreEos = true });
        Assert.Equal(Ref.IdRows("generation.new_tokens"), result.NewTokens);
    }

    [Fact]
    public async Task The_async_forward_equals_the_blocking_one_and_honours_cancellation()
    {
        using var lm = await swarm.ConnectAsync(swarm.ThreePeers);
        // Detached rather than under no_grad(): grad mode is per thread, and an await may resume on another one.
        using var embedded = lm.Ends.Embed(Ref.Longs("input_ids"));                            // [B, T, H]
        using var hidden = embedded.detach();                                                   // [B, T, H]
        using var blocking = lm.Blocks.Forward(hidden);                                         // [B, T, H]
        using var awaited = await lm.Blocks.ForwardAsync(hidden);                               // [B, T, H]
        Assert.Equal(0, TensorAssert.MaxAbsDiff(blocking, awaited));
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => (await lm.Blocks.ForwardAsync(hidden, null, cancelled.Token)).Dispose());
    }

    [Fact]
    public async Task Hidden_states_between_spans_are_visible()
    {
        using var lm = await swarm.ConnectAsync(swarm.ThreePeers);
        using var result = lm.Inspect(Ref.Longs("input_ids"));
        var expected = Ref.Floats("hidden_states");
        for (int i = 0; i < result.HiddenStates.Count; i++)
            TensorAssert.Close(expected[i], result.HiddenStates[i]!, 1e-3, 1e-4, $"hidden_states[{i}]");
    }

    [Fact]
    public async Task Backward_through_the_servers_matches_local_autograd()
    {
        using var lm = await swarm.ConnectAsync(swarm.ThreePeers);
        using var local = CausalLM.Load(LlamaSwarm.ModelDir);
        manual_seed(11);
        var x = randn(2, 5, 64);
        var weights = randn(2, 5, 64);
        Tensor Grad(IBlockStack blocks)
        {
            var input = x.clone().requires_grad_(true);
            var loss = (blocks.Forward(input) * weights).sum();
            if (blocks is RemoteSequential remote) remote.Backward(loss);
            else loss.backward();
            return input.grad!.clone();
        }
        var expected = Grad(local.Blocks);
        var actual = Grad(lm.Blocks);
        Assert.True(TensorAssert.MaxAbsDiff(expected, actual) <= 1e-5, $"max diff {TensorAssert.MaxAbsDiff(expected, actual)}");
    }

    [Fact]
    public async Task A_failed_remote_backward_is_reported_not_swallowed()
    {
        using var lm = await swarm.ConnectAsync(swarm.TwoPeers);
        var remote = (RemoteSequential)lm.Blocks;
        var input = randn(1, 3, 64).requires_grad_(true);
        var loss = (remote.Forward(input) * float.NaN).sum();      // NaN gradients: the server must refuse them
        var e = Assert.ThrowsAny<Exception>(() => remote.Backward(loss));
        Assert.Contains("NaN", e.Message);
        Assert.True(input.grad!.isnan().all().item<bool>(), "a failed hop must not yield usable gradients");
    }

    [Fact]
    public async Task A_slice_runs_only_its_blocks()
    {
        using var lm = await swarm.ConnectAsync(swarm.ThreePeers);
        using var local = CausalLM.Load(LlamaSwarm.ModelDir);
        var slice = ((RemoteSequential)lm.Blocks)[1..3];
        Assert.Equal((1, 3), (slice.Start, slice.End));
        var x = randn(1, 4, 64);
        var expected = ((LocalBlockStack)local.Blocks).Slice(1, 3).Forward(x);
        Assert.True(TensorAssert.MaxAbsDiff(expected, slice.Forward(x)) <= 1e-5);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Rollback_and_beam_reorder_match_local(bool push)
    {
        using var lm = await swarm.ConnectAsync(swarm.ThreePeers, new RemoteOptions { UseServerToServer = push });
        using var local = CausalLM.Load(LlamaSwarm.ModelDir);
        manual_seed(5);
        var prefix = randn(2, 4, 64);
        var step = randn(2, 2, 64);
        async Task<Tensor> Run(IBlockStack blocks)
        {
            using var s = blocks.OpenSession(new SessionOptions(2, 16));
            await s.StepAsync(prefix);
            await s.StepAsync(randn(2, 3, 64));                                        // tokens to be rolled back
            await s.StepAsync(step, new StepOptions(StartFromPosition: 4));
            return await s.StepAsync(step.narrow(1, 0, 1), new StepOptions(HypoIds: tensor(new long[] { 1, 0 })));
        }
        var expected = await Run(local.Blocks);
        var actual = await Run(lm.Blocks);
        Assert.True(TensorAssert.MaxAbsDiff(expected, actual) <= 1e-5);
    }

    [Theory]
    [InlineData(Compression.Float16, 2e-3)]
    [InlineData(Compression.Bfloat16, 3e-2)]
    [InlineData(Compression.Int8Blockwise, 1e-1)]
    public async Task Compressed_activations_stay_within_their_bound(Compression compression, double bound)
    {
        using var lm = await swarm.ConnectAsync(swarm.ThreePeers, new RemoteOptions { Compression = compression });
        var ids = Ref.Longs("input_ids");
        var logits = lm.Forward(ids);
        var expected = Ref.Floats("logits");
        var relative = TensorAssert.MaxAbsDiff(expected, logits) / expected.abs().max().item<float>();
        Assert.True(relative <= bound, $"{compression}: max |Δlogit| / max |logit| = {relative:E2} > {bound:E0}");
        if (compression == Compression.Bfloat16)
        {
            var result = await lm.GenerateAsync(Ref.IdRows("generation.prompt_ids"), new GenerationOptions { MaxNewTokens = 12, IgnoreEos = true });
            Assert.Equal(Ref.IdRows("generation.new_tokens"), result.NewTokens);
        }
    }
}
