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
}
