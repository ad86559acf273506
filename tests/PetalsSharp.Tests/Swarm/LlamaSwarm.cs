using PetalsSharp.Client;
using PetalsSharp.Models;
using PetalsSharp.Server;
using Xunit;

namespace PetalsSharp.Tests.Swarm;

/// <summary>
/// Five server processes over the llama-gqa fixture (3 blocks): a 2-server chain [0:2] [2:3] and a 3-server
/// chain [0:1] [1:2] [2:3]. Started once for every test of the collection and killed afterwards. There is no DHT,
/// so each may push to any server on 127.0.0.1 (--push-peers); the other static swarms test the client's fallback.
/// </summary>
public sealed class LlamaSwarm : IAsyncLifetime
{
    public static readonly string ModelDir = TestData.Path("llama-gqa");

    public ServerProcess[] TwoServers { get; private set; } = [];
    public ServerProcess[] ThreeServers { get; private set; } = [];

    public IEnumerable<string> TwoPeers => TwoServers.Select(s => s.Address);
    public IEnumerable<string> ThreePeers => ThreeServers.Select(s => s.Address);

    public async Task InitializeAsync()
    {
        var starts = new[] { (0, 2), (2, 3), (0, 1), (1, 2), (2, 3) }
            .Select(s => ServerProcess.StartAsync(ModelDir, s.Item1, s.Item2, "--push-peers", "127.0.0.1")).ToArray();
        var servers = await Task.WhenAll(starts);
        TwoServers = servers[..2];
        ThreeServers = servers[2..];
    }

    public Task<CausalLM> ConnectAsync(IEnumerable<string> peers, RemoteOptions? options = null) =>
        DistributedModel.ConnectAsync(ModelDir, peers, options);

    public Task DisposeAsync()
    {
        foreach (var s in TwoServers.Concat(ThreeServers)) s.Dispose();
        return Task.CompletedTask;
    }
}

[CollectionDefinition(Name)]
public sealed class LlamaSwarmCollection : ICollectionFixture<LlamaSwarm>
{
    public const string Name = "llama swarm";
}
