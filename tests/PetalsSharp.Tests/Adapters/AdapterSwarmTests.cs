using PetalsSharp.Client;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Swarm;
using Xunit;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace PetalsSharp.Tests.Adapters;

/// <summary>
/// Three <c>petals server</c> processes over llama-gqa: [0:2] and [2:3] hold the random adapter "tiny", [0:3] holds
/// none. The reference is a local model whose weights have the adapter merged in.
/// </summary>
public sealed class AdapterSwarm : IAsyncLifetime
{
    public const string Name = "tiny";
    public string AdapterDir { get; } = TestAdapter.Write(TestAdapter.NewDir(Name), seed: 7);
    public string MergedDir { get; private set; } = "";
    public ServerProcess[] WithAdapter { get; private set; } = [];
    public ServerProcess Plain { get; private set; } = null!;

    public IEnumerable<string> Peers => WithAdapter.Select(s => s.Address).Append(Plain.Address);

    public async Task InitializeAsync()
    {
        MergedDir = TestAdapter.WriteMerged(AdapterDir);
        var spec = $"{Name}={AdapterDir}";
        var servers = await Task.WhenAll(
            ServerProcess.StartAsync(TestAdapter.ModelDir, 0, 2, "--adapters", spec),
            ServerProcess.StartAsync(TestAdapter.ModelDir, 2, 3, "--adapters", spec),
            ServerProcess.StartAsync(TestAdapter.ModelDir, 0, 3));
        WithAdapter = servers[..2];
        Plain = servers[2];
    }

    public Task<CausalLM> ConnectAsync(string? adapter, RemoteOptions? options = null) =>
        DistributedModel.ConnectAsync(TestAdapter.ModelDir, Peers, (options ?? new RemoteOptions()) with { ActiveAdapter = adapter });

    public Task DisposeAsync()
    {
        foreach (var s in WithAdapter.Append(Plain)) s?.Dispose();
        return Task.CompletedTask;
    }
}

[CollectionDefinition(Name)]
public sealed class AdapterSwarmCollection : ICollectionFixture<AdapterSwarm>
{
    public const string Name = "adapter swarm";
}

/// <summary>
/// Forward, backward and inference sessions through servers in their own processes, with the adapter chosen per request,
/// equal a local model with merged weights; routing uses only servers that hold the adapter. No dispose scope: tests
/// resume on other threads after awaits.
/// </summary>
[Trait("Category", "Processes")]
[Collection(AdapterSwarmCollection.Name)]
public sealed class AdapterSwarmTests(AdapterSwarm swarm)
{
    static readonly Reference Ref = Reference.Load("llama-gqa");

    [Fact]
    public async Task Logits_with_the_adapter_equal_merged_weights_and_differ_from_base()
    {
        var routes = new List<string>();
        using var lm = await swarm.ConnectAsync(AdapterSwarm.Name, new RemoteOptions { OnRoute = routes.Add });
        using var merged = CausalLM.Load(swarm.MergedDir);
        var ids = Ref.Longs("input_ids");
        var remote = lm.Forward(ids);
        TensorAssert.Close(merged.Forward(ids), remote, 1e-4, 0, "adapted logits vs merged");
        Assert.True(TensorAssert.MaxAbsDiff(Ref.Floats("logits"), remote) > 1e-2, "the adapter must change the logits");
        Assert.All(routes, r => Assert.DoesNotContain(swarm.Plain.Address, r));

        using var plain = await swarm.ConnectAsync(null);
        TensorAssert.Close(Ref.Floats("logits"), plain.Forward(ids), 1e-3, 1e-4, "base logits vs HF");
    }

    [Fact]
    public async Task Backward_with_the_adapter_matches_local_autograd()
    {
        using var lm = await swarm.ConnectAsync(AdapterSwarm.Name);
        using var merged = CausalLM.Load(swarm.MergedDir);
        using var local = CausalLM.Load(TestAdapter.ModelDir);
        using var adapter = PetalsSharp.Models.Lora.LoraAdapter.Load(AdapterSwarm.Name, swarm.AdapterDir, local.Config);
        manual_seed(11);
        var x = randn(2, 5, 64);
        var weights = randn(2, 5, 64);
        Tensor Grad(IBlockStack blocks, ForwardOptions? options = null)
        {
            var input = x.clone().requires_grad_(true);
            var loss = (blocks.Forward(input, options) * weights).sum();
            if (blocks is RemoteSequential remote) remote.Backward(loss);
            else loss.backward();
            return input.grad!.clone();
        }
        var remoteGrad = Grad(lm.Blocks);
        // The servers run the same low-rank path as local blocks with the adapter: equal up to float32 noise.
        var hooked = Grad(local.Blocks, new ForwardOptions { Adapter = adapter });
        Assert.True(TensorAssert.MaxAbsDiff(hooked, remoteGrad) <= 1e-5, $"remote vs local adapter: {TensorAssert.MaxAbsDiff(hooked, remoteGrad):E2}");
        // Merged weights round differently (W + BA is summed before the matmul); gradients reach |g| ~ 10 here,
        // so compare relative to their size.
        var expected = Grad(merged.Blocks);
        double relative = TensorAssert.MaxAbsDiff(expected, remoteGrad) / expected.abs().max().item<float>();
        Assert.True(relative <= 1e-4, $"grad_input vs merged weights: max |diff| / max |grad| = {relative:E2}");
        Assert.True(TensorAssert.MaxAbsDiff(Grad(local.Blocks), remoteGrad) > 1e-2, "the adapter must change the gradients");
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Inference_sessions_with_the_adapter_match_merged_weights(bool push)
    {
        using var lm = await swarm.ConnectAsync(AdapterSwarm.Name, new RemoteOptions { UseServerToServer = push });
        using var merged = CausalLM.Load(swarm.MergedDir);
        manual_seed(5);
        var prefix = randn(2, 4, 64);
        var next = randn(2, 1, 64);
        async Task<(Tensor, Tensor)> Run(IBlockStack blocks)
        {
            using var s = blocks.OpenSession(new SessionOptions(2, 16));
            return (await s.StepAsync(prefix), await s.StepAsync(next));
        }
        var (e1, e2) = await Run(merged.Blocks);
        var (a1, a2) = await Run(lm.Blocks);
        TensorAssert.Close(e1, a1, 1e-4, 1e-4, "prefill");
        TensorAssert.Close(e2, a2, 1e-4, 1e-4, "decode step");

        var options = new GenerationOptions { MaxNewTokens = 8, IgnoreEos = true };
        var prompts = Ref.IdRows("generation.prompt_ids");
        Assert.Equal((await merged.GenerateAsync(prompts, options)).NewTokens, (await lm.GenerateAsync(prompts, options)).NewTokens);
    }

    [Fact]
    public async Task Generate_CLI_with_adapter_equals_merged_weights_and_an_unknown_one_exits_nonzero()
    {
        using var r = Reference.Load("llama-gqa");
        using var merged = CausalLM.Load(swarm.MergedDir);
        var expected = (await merged.GenerateAsync(r.IdRows("generation.prompt_ids"), new GenerationOptions { MaxNewTokens = 6, IgnoreEos = true })).NewTokens;
        var res = await PetalsSharp.Tests.Cli.CliRunner.RunAsync("generate", "--model", TestAdapter.ModelDir, "--peers", string.Join(",", swarm.Peers),
            "--adapter", AdapterSwarm.Name, "--input-ids", r.IdsArg("generation.prompt_ids"), "--max-new-tokens", "6", "--greedy", "--ignore-eos", "--json");
        Assert.True(res.ExitCode == 0, res.Stderr);
        using var doc = System.Text.Json.JsonDocument.Parse(res.Stdout);
        var actual = doc.RootElement.GetProperty("new_tokens").EnumerateArray().Select(row => row.EnumerateArray().Select(t => t.GetInt32()).ToList()).ToList();
        Assert.Equal(expected.Select(row => row.ToList()).ToList(), actual);

        var bad = await PetalsSharp.Tests.Cli.CliRunner.RunAsync("generate", "--model", TestAdapter.ModelDir, "--peers", string.Join(",", swarm.Peers),
            "--adapter", "nope", "--input-ids", "1,2", "--max-new-tokens", "2");
        Assert.NotEqual(0, bad.ExitCode);
        Assert.Contains("with adapter 'nope'", bad.Stderr);
        var local = await PetalsSharp.Tests.Cli.CliRunner.RunAsync("generate", "--model", TestAdapter.ModelDir, "--adapter", "tiny", "--input-ids", "1,2");
        Assert.NotEqual(0, local.ExitCode);
        Assert.Contains("--adapter names a server-side adapter", local.Stderr);
    }

    [Fact]
    public async Task Asking_for_an_adapter_no_server_holds_fails_naming_it_and_the_blocks()
    {
        var e = await Assert.ThrowsAsync<SwarmException>(() => swarm.ConnectAsync("nope"));
        Assert.Contains("blocks 0, 1, 2 with adapter 'nope'", e.Message);
        Assert.Contains("servers with it: none", e.Message);
    }

    [Fact]
    public async Task Servers_list_their_adapters_in_Info()
    {
        using var client = new PetalsSharp.Tests.Server.ServerClient(swarm.WithAdapter[0].Address);
        var info = await client.Raw.InfoAsync(new PetalsSharp.Wire.V1.InfoRequest());
        Assert.Equal([AdapterSwarm.Name], info.Adapters);
        using var plain = new PetalsSharp.Tests.Server.ServerClient(swarm.Plain.Address);
        Assert.Empty((await plain.Raw.InfoAsync(new PetalsSharp.Wire.V1.InfoRequest())).Adapters);
    }
}
