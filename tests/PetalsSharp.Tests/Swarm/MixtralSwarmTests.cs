using PetalsSharp.Client;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Tests.Adapters;
using Xunit;

namespace PetalsSharp.Tests.Swarm;

/// <summary>
/// Two <c>petals server</c> processes over the mixtral fixture, one block each, started once for the class. Both
/// hold a random LoRA adapter "moe" on attention, router and every expert; plain requests do not use it.
/// </summary>
public sealed class MixtralSwarm : IAsyncLifetime
{
    public static readonly string ModelDir = TestData.Path("mixtral");

    public ServerProcess[] Servers { get; private set; } = [];
    public string AdapterDir { get; } = TestAdapter.Write(TestAdapter.NewDir("moe"), seed: 11, fixture: "mixtral");

    public async Task InitializeAsync()
    {
        var spec = $"moe={AdapterDir}";
        Servers = await Task.WhenAll(ServerProcess.StartAsync(ModelDir, 0, 1, "--adapters", spec),
            ServerProcess.StartAsync(ModelDir, 1, 2, "--adapters", spec));
    }

    public Task<CausalLM> ConnectAsync(RemoteOptions? options = null) =>
        DistributedModel.ConnectAsync(ModelDir, Servers.Select(s => s.Address), options);

    public Task DisposeAsync()
    {
        foreach (var s in Servers) s.Dispose();
        return Task.CompletedTask;
    }
}

/// <summary>A whole mixture-of-experts block per server; the chain reproduces HF's logits and greedy tokens.</summary>
[Trait("Category", "Processes")]
public sealed class MixtralSwarmTests(MixtralSwarm swarm) : IClassFixture<MixtralSwarm>
{
    static readonly Reference Ref = Reference.Load("mixtral");

    [Fact]
    public async Task Logits_match_HF_through_both_servers()
    {
        var routes = new List<string>();
        using var lm = await swarm.ConnectAsync(new RemoteOptions { OnRoute = routes.Add });
        var logits = lm.Forward(Ref.Longs("input_ids"));
        TensorAssert.Close(Ref.Floats("logits"), logits, 1e-3, 1e-4, "logits vs HF");
        Assert.Equal(2, routes[^1].Split(' ').Length - 1);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Greedy_tokens_equal_the_fixture(bool push)
    {
        using var lm = await swarm.ConnectAsync(new RemoteOptions { UseServerToServer = push });
        var result = await lm.GenerateAsync(Ref.IdRows("generation.prompt_ids"), new GenerationOptions { MaxNewTokens = 12, IgnoreEos = true });
        Assert.Equal(Ref.IdRows("generation.new_tokens"), result.NewTokens);
        Assert.Equal(Ref.IdRows("generation.sequences"), result.Sequences);
    }

    [Fact]
    public async Task An_adapter_on_attention_router_and_experts_equals_merged_weights()
    {
        using var lm = await swarm.ConnectAsync(new RemoteOptions { ActiveAdapter = "moe" });
        using var merged = CausalLM.Load(TestAdapter.WriteMerged(swarm.AdapterDir));
        var ids = Ref.Longs("input_ids");
        var adapted = lm.Forward(ids);
        TensorAssert.Close(merged.Forward(ids), adapted, 1e-4, 1e-4, "adapted logits vs merged");
        Assert.True(TensorAssert.MaxAbsDiff(Ref.Floats("logits"), adapted) > 1e-2, "the adapter must change the logits");
    }
}
