using PetalsSharp.Client;
using PetalsSharp.Hub;
using PetalsSharp.Models;
using PetalsSharp.Server;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Hub;

/// <summary>
/// Two servers and a client, each with its own HF cache filled from the fake hub with only its own shards,
/// compute the same logits as the whole local model.
/// </summary>
public sealed class HubSwarmTests
{
    [Fact]
    public async Task ServersAndClientWithPartialDownloadsMatchTheLocalModel()
    {
        string root = Path.Combine(Path.GetTempPath(), "petals-hubswarm-" + Guid.NewGuid().ToString("N"));
        try
        {
            await using var hub = await FakeHub.StartAsync();
            var shards = HubRepos.Sharded(Path.Combine(root, "repo"));
            hub.Publish("acme/llama-gqa", Path.Combine(root, "repo"));
            var id = new HubModelId("acme/llama-gqa");
            async Task<string> Fetch(string cache, WeightSelection weights)
            {
                using var resolver = new HubModelResolver(new HubSettings { Endpoint = hub.Endpoint, CacheDir = Path.Combine(root, cache) });
                return (await resolver.ResolveAsync(id, weights)).Directory;
            }
            string front = await Fetch("front", WeightSelection.Blocks(0, 2)), back = await Fetch("back", WeightSelection.Blocks(2, 3));
            string client = await Fetch("client", WeightSelection.ClientEnds);
            Assert.False(File.Exists(Path.Combine(client, shards.Blocks[0])));
            Assert.False(File.Exists(Path.Combine(front, shards.Blocks[2])));

            ServerOptions Options(string dir, int start, int end) =>
                new() { ModelDir = dir, ModelName = id.Name, StartBlock = start, EndBlock = end, Host = "127.0.0.1", Port = 0 };
            await using var a = BlockServer.Load(Options(front, 0, 2));
            await using var b = BlockServer.Load(Options(back, 2, 3));
            await a.StartAsync();
            await b.StartAsync();

            using var ids = tensor(new long[] { 1, 5, 9, 42, 7 }, [1, 5]);
            using var remote = await DistributedModel.ConnectAsync(client, [a.Address, b.Address]);
            using var local = CausalLM.Load(HubRepos.FixtureDir, new ModelLoadOptions());
            using var got = remote.Inspect(ids);
            using var want = local.Inspect(ids);
            Assert.True(got.Logits.allclose(want.Logits, rtol: 1e-4, atol: 1e-5), "remote logits differ from the local model's");
        }
        finally
        {
            if (Directory.Exists(root)) Directory.Delete(root, recursive: true);
        }
    }

    /// <summary>
    /// Issue 17: a server that lets the swarm place it starts from the config and index alone, then downloads the
    /// shards of the blocks it was given, and of no others.
    /// </summary>
    [Fact]
    public async Task An_auto_placed_server_downloads_only_the_shards_of_its_chosen_blocks()
    {
        string root = Path.Combine(Path.GetTempPath(), "petals-hubauto-" + Guid.NewGuid().ToString("N"));
        try
        {
            await using var hub = await FakeHub.StartAsync();
            var shards = HubRepos.Sharded(Path.Combine(root, "repo"));
            hub.Publish("acme/llama-gqa", Path.Combine(root, "repo"));
            var id = new HubModelId("acme/llama-gqa");
            var settings = new HubSettings { Endpoint = hub.Endpoint, CacheDir = Path.Combine(root, "cache") };
            var fetched = new List<(int, int)>();
            async Task<string> Fetch(WeightSelection weights)
            {
                using var resolver = new HubModelResolver(settings);
                return (await resolver.ResolveAsync(id, weights)).Directory;
            }
            string dir = await Fetch(WeightSelection.None);
            Assert.All(shards.Blocks, shard => Assert.False(File.Exists(Path.Combine(dir, shard))));

            await using var bootstrap = await PetalsSharp.Dht.DhtNode.StartAsync(new PetalsSharp.Dht.DhtNodeOptions { Host = "127.0.0.1", Port = 0 });
            await using var server = BlockServer.Load(new ServerOptions
            {
                ModelDir = dir, ModelName = id.Name, NumBlocks = 1, Host = "127.0.0.1", Port = 0, InitialPeers = [bootstrap.PeerAddress],
                FixedThroughput = 100, PlacementDelay = TimeSpan.Zero, RebalancePeriod = TimeSpan.Zero,
                FetchBlocks = async (s, e, ct) =>
                {
                    lock (fetched) fetched.Add((s, e));
                    await Fetch(WeightSelection.Blocks(s, e));
                },
            });
            await server.StartAsync();
            Assert.Equal([(server.Start, server.End)], fetched);
            for (int b = 0; b < shards.Blocks.Length; b++)
                Assert.Equal(b == server.Start || shards.Blocks[b] == shards.Blocks[server.Start], File.Exists(Path.Combine(dir, shards.Blocks[b])));

            // It serves what it fetched.
            Assert.Equal((0, 1), (server.Start, server.End));   // an empty swarm: the lowest start wins
            using var client = new PetalsSharp.Tests.Server.ServerClient(server.Address);
            using var hidden = randn(1, 3, 64);                                                  // [B, T, H]
            using var output = await client.ForwardAsync(hidden, PetalsSharp.Tests.Server.ServerClient.Header(0, 1));
            Assert.Equal([1L, 3, 64], output.shape);
        }
        finally
        {
            if (Directory.Exists(root)) Directory.Delete(root, recursive: true);
        }
    }
}
