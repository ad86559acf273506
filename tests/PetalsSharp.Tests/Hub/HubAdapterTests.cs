using PetalsSharp.Client;
using PetalsSharp.Hub;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Tests.Adapters;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Hub;

/// <summary>
/// <c>petals server --adapters ORG/NAME</c> fetches a PEFT adapter from the (fake) hub into the shared cache, as
/// Petals servers do, and serves it under its repo id.
/// </summary>
[Trait("Category", "Processes")]
public sealed class HubAdapterTests
{
    static readonly string[] Files = ["adapter_config.json", "adapter_model.safetensors"];

    [Fact]
    public async Task Adapter_files_land_in_the_cache_and_are_reused_offline()
    {
        string root = Path.Combine(Path.GetTempPath(), "petals-hubadapter-" + Guid.NewGuid().ToString("N"));
        try
        {
            await using var hub = await FakeHub.StartAsync();
            var commit = hub.Publish("acme/tiny-lora", TestAdapter.Write(TestAdapter.NewDir()));
            var settings = new HubSettings { Endpoint = hub.Endpoint, CacheDir = Path.Combine(root, "cache") };
            var id = new HubModelId("acme/tiny-lora");
            using (var resolver = new HubModelResolver(settings))
            {
                var online = await resolver.ResolveFilesAsync(id, Files);
                Assert.Equal(commit, online.Commit);
                Assert.Equal(Path.Combine(root, "cache", "models--acme--tiny-lora", "snapshots", commit), online.Directory);
                Assert.All(Files, f => Assert.True(File.Exists(Path.Combine(online.Directory, f)), f));
                using var adapter = PetalsSharp.Models.Lora.LoraAdapter.Load("acme/tiny-lora", online.Directory, ModelConfigLoader.Load(TestAdapter.ModelDir));
                Assert.Equal(3 * 7, adapter.Targets.Count);

                var missing = await Assert.ThrowsAsync<HubException>(() => resolver.ResolveFilesAsync(id, [.. Files, "extra.bin"]));
                Assert.Contains("extra.bin does not exist", missing.Message);
            }
            using var offline = new HubModelResolver(settings with { Offline = true, Endpoint = "http://127.0.0.1:9" });
            Assert.Equal(commit, (await offline.ResolveFilesAsync(id, Files)).Commit);
            var absent = await Assert.ThrowsAsync<HubException>(() => offline.ResolveFilesAsync(new HubModelId("acme/other"), Files));
            Assert.Contains("HF_HUB_OFFLINE is set", absent.Message);
        }
        finally
        {
            if (Directory.Exists(root)) Directory.Delete(root, recursive: true);
        }
    }

    [Fact]
    public async Task A_server_serves_a_hub_adapter_under_its_repo_id_and_a_missing_one_stops_it()
    {
        string root = Path.Combine(Path.GetTempPath(), "petals-hubadapter-" + Guid.NewGuid().ToString("N"));
        ServerProcess? server = null;
        try
        {
            await using var hub = await FakeHub.StartAsync();
            var adapterDir = TestAdapter.Write(TestAdapter.NewDir(), seed: 21);
            hub.Publish("acme/tiny-lora", adapterDir);
            var env = new Dictionary<string, string> { ["HF_ENDPOINT"] = hub.Endpoint, ["HF_HUB_CACHE"] = Path.Combine(root, "cache") };

            server = await ServerProcess.StartAsync(TestAdapter.ModelDir, 0, 3, env, "--adapters", "acme/tiny-lora");
            using var lm = await DistributedModel.ConnectAsync(TestAdapter.ModelDir, [server.Address], new RemoteOptions { ActiveAdapter = "acme/tiny-lora" });
            using var merged = CausalLM.Load(TestAdapter.WriteMerged(adapterDir));
            using var ids = tensor(new long[] { 1, 5, 9, 42, 7 }, [1, 5]);
            TensorAssert.Close(merged.Forward(ids), lm.Forward(ids), 1e-4, 1e-4, "hub adapter logits vs merged");
            Assert.Contains(hub.Downloads, r => r.Path.EndsWith("/adapter_model.safetensors"));

            var bad = await Assert.ThrowsAsync<InvalidOperationException>(() =>
                ServerProcess.StartAsync(TestAdapter.ModelDir, 0, 3, env, "--adapters", "acme/no-such-lora"));
            Assert.Contains("acme/no-such-lora", bad.Message);
        }
        finally
        {
            server?.Dispose();
            if (Directory.Exists(root)) Directory.Delete(root, recursive: true);
        }
    }
}
