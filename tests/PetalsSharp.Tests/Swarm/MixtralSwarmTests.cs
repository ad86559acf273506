using PetalsSharp.Client;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Server;
using Xunit;

namespace PetalsSharp.Tests.Swarm;

/// <summary>Two <c>petals server</c> processes over the mixtral fixture, one block each, started once for the class.</summary>
public sealed class MixtralSwarm : IAsyncLifetime
{
    public static readonly string ModelDir = TestData.Path("mixtral");

    public ServerProcess[] Servers { get; private set; } = [];

    public async Task InitializeAsync() =>
        Servers = await Task.WhenAll(ServerProcess.StartAsync(ModelDir, 0, 1), ServerProcess.StartAsync(ModelDir, 1, 2));

    public Task<CausalLM> ConnectAsync(RemoteOptions? options = null) =>
        DistributedModel.ConnectAsync(ModelDir, Servers.Select(s => s.Address), options);

    public Task DisposeAsync()
    {
        foreach (var s in Servers) s.Dispose();
        return Task.CompletedTask;
    }
}

/// <summary>A whole mixture-of-experts block per server; the chain reproduces HF's logits and greedy tokens.</summary>
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
}
