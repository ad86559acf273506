using PetalsSharp.Tests.Cli;
using Xunit;

namespace PetalsSharp.Tests.Hub;

/// <summary>The real <c>petals</c> CLI resolving <c>--model ORG/NAME</c> through a fake hub named by HF_ENDPOINT.</summary>
[Trait("Category", "Processes")]
public sealed class HubCliTests
{
    [Fact]
    public async Task InspectRunsAHubModelAndThenWorksOfflineFromTheCache()
    {
        string root = Path.Combine(Path.GetTempPath(), "petals-hubcli-" + Guid.NewGuid().ToString("N"));
        try
        {
            await using var hub = await FakeHub.StartAsync();
            hub.Publish("acme/llama-gqa", HubRepos.SingleFile(Path.Combine(root, "repo")));
            var env = new Dictionary<string, string>
            {
                ["HF_ENDPOINT"] = hub.Endpoint, ["HF_HUB_CACHE"] = Path.Combine(root, "cache"), ["HF_TOKEN"] = "hf_do_not_print",
            };
            string[] args = ["inspect", "--model", "acme/llama-gqa", "--input-ids", "1,2,3", "--json"];

            var online = await CliRunner.RunAsync(env, args);
            Assert.True(online.ExitCode == 0, online.Stderr);
            var local = await CliRunner.RunAsync("inspect", "--model", HubRepos.FixtureDir, "--input-ids", "1,2,3", "--json");
            Assert.Equal(0, local.ExitCode);
            Assert.Equal(local.Stdout, online.Stdout);   // the same forward pass as the local folder
            Assert.Contains("model.safetensors", online.Stderr);
            Assert.DoesNotContain("hf_do_not_print", online.Stdout + online.Stderr);
            Assert.Contains(hub.Downloads, r => r.Path.EndsWith("/model.safetensors"));

            var offline = await CliRunner.RunAsync(new Dictionary<string, string>(env) { ["HF_HUB_OFFLINE"] = "1", ["HF_ENDPOINT"] = "http://127.0.0.1:9" }, args);
            Assert.True(offline.ExitCode == 0, offline.Stderr);
            Assert.Equal(local.Stdout, offline.Stdout);

            var missing = await CliRunner.RunAsync(new Dictionary<string, string>(env) { ["HF_HUB_OFFLINE"] = "1", ["HF_HUB_CACHE"] = Path.Combine(root, "empty") }, args);
            Assert.Equal(1, missing.ExitCode);
            Assert.StartsWith("error: HF_HUB_OFFLINE is set, and acme/llama-gqa has no cached snapshot", missing.Stderr.Trim());

            var notAModel = await CliRunner.RunAsync("inspect", "--model", "./no/such/folder", "--input-ids", "1");
            Assert.Equal(1, notAModel.ExitCode);
            Assert.Contains("model folder not found: ./no/such/folder", notAModel.Stderr);
        }
        finally
        {
            if (Directory.Exists(root)) Directory.Delete(root, recursive: true);
        }
    }
}
