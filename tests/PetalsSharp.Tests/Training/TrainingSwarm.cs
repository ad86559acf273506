using PetalsSharp.Client;
using PetalsSharp.Models;
using PetalsSharp.Server;
using Xunit;

namespace PetalsSharp.Tests.Training;

/// <summary>
/// Two <c>petals server</c> processes over the llama-gqa fixture, [0:2] and [2:3]: every fine-tuning test runs its
/// gradients through both. Lighter than <see cref="Swarm.LlamaSwarm"/>'s five servers.
/// </summary>
public sealed class TrainingSwarm : IAsyncLifetime
{
    public static readonly string ModelDir = TestData.Path("llama-gqa");

    public ServerProcess[] Servers { get; private set; } = [];
    public IEnumerable<string> Peers => Servers.Select(s => s.Address);

    public async Task InitializeAsync() =>
        Servers = await Task.WhenAll(ServerProcess.StartAsync(ModelDir, 0, 2), ServerProcess.StartAsync(ModelDir, 2, 3));

    public Task<CausalLM> ConnectAsync() => DistributedModel.ConnectAsync(ModelDir, Peers);

    public Task DisposeAsync()
    {
        foreach (var s in Servers) s.Dispose();
        return Task.CompletedTask;
    }
}

/// <summary>
/// Run alone: some of these tests seed torch's global generator (<c>manual_seed</c>) and draw from it twice, once per
/// side they compare, so another test drawing in parallel between the seed and the draw would give the two sides
/// different inputs.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class TrainingSwarmCollection : ICollectionFixture<TrainingSwarm>
{
    public const string Name = "training swarm";
}
