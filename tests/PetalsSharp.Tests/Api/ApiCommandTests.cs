using System.Diagnostics;
using System.Net;
using System.Text.Json.Nodes;
using PetalsSharp.Api.OpenAi;
using PetalsSharp.Server;
using PetalsSharp.Tests.Cli;
using Xunit;

namespace PetalsSharp.Tests.Api;

/// <summary><c>petals api</c> as a child process over the swarm, its usage errors, and the error mapping.</summary>
[Trait("Category", "Processes")]
[Collection(ApiSwarmCollection.Name)]
public sealed class ApiCommandTests(ApiSwarm swarm)
{
    [Fact]
    public async Task Petals_api_serves_the_swarm_and_prints_its_url()
    {
        var (p, url) = await StartApiAsync("--peers", string.Join(",", swarm.Peers));
        try
        {
            using var http = new HttpClient { BaseAddress = new Uri(url) };
            var models = JsonNode.Parse(await http.GetStringAsync("/v1/models"))!;
            Assert.Equal(swarm.ModelId, (string?)models["data"]![0]!["id"]);
            var chat = await http.PostAsync("/v1/chat/completions", new StringContent(
                $$"""{"model":"{{swarm.ModelId}}","messages":[{"role":"user","content":"Hi"}],"temperature":0,"max_tokens":5}""",
                System.Text.Encoding.UTF8, "application/json"));
            Assert.Equal(HttpStatusCode.OK, chat.StatusCode);
        }
        finally
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit(10_000);
        }
    }

    [Fact]
    public async Task Petals_api_over_the_dht_also_serves_the_dashboard()
    {
        await using var dht = await PetalsSharp.Dht.DhtNode.StartAsync(new PetalsSharp.Dht.DhtNodeOptions { Host = "127.0.0.1", Port = 0 });
        var started = await Task.WhenAll(
            ServerProcess.StartAsync(swarm.ModelDir, 0, 1, "--initial-peers", dht.PeerAddress, "--update-period", "2"),
            ServerProcess.StartAsync(swarm.ModelDir, 1, 2, "--initial-peers", dht.PeerAddress, "--update-period", "2"));
        using var first = started[0];
        using var second = started[1];
        var (p, url) = await StartApiAsync("--initial-peers", dht.PeerAddress);
        try
        {
            using var http = new HttpClient { BaseAddress = new Uri(url) };
            var chat = await http.PostAsync("/v1/chat/completions", new StringContent(
                $$"""{"model":"{{swarm.ModelId}}","messages":[{"role":"user","content":"Hi"}],"temperature":0,"max_tokens":3}""",
                System.Text.Encoding.UTF8, "application/json"));
            Assert.Equal(HttpStatusCode.OK, chat.StatusCode);
            Assert.Contains("<html", await http.GetStringAsync("/"), StringComparison.OrdinalIgnoreCase);
            // The watcher reads the DHT every second: both servers show up in the JSON snapshot.
            string swarmJson = "";
            for (int i = 0; i < 60 && !(swarmJson.Contains(first.Address) && swarmJson.Contains(second.Address)); i++)
            {
                await Task.Delay(500);
                swarmJson = await http.GetStringAsync("/api/v1/swarm");
            }
            Assert.Contains(first.Address, swarmJson);
            Assert.Contains(second.Address, swarmJson);
        }
        finally
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit(10_000);
        }
    }

    /// <summary>Starts <c>petals api</c> over the test model and returns it with the URL from its "listening on" line.</summary>
    async Task<(Process Process, string Url)> StartApiAsync(params string[] where)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { ServerProcess.DefaultPetalsDll, "api", "--model", swarm.ModelDir, "--port", "0" }.Concat(where))
            psi.ArgumentList.Add(a);
        psi.Environment[ParentWatchdog.Variable] = Environment.ProcessId.ToString();
        var p = Process.Start(psi)!;
        var url = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var log = new System.Text.StringBuilder();
        p.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (log) log.AppendLine(e.Data);
            if (e.Data.StartsWith("listening on ", StringComparison.Ordinal)) url.TrySetResult(e.Data["listening on ".Length..]);
        };
        p.ErrorDataReceived += (_, e) => { lock (log) log.AppendLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        if (await Task.WhenAny(url.Task, Task.Delay(TimeSpan.FromSeconds(90))) != url.Task)
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"no 'listening on' line:\n{log}");
        }
        return (p, await url.Task);
    }

    [Fact]
    public async Task Petals_api_needs_a_swarm_or_local()
    {
        var res = await CliRunner.RunAsync("api", "--model", swarm.ModelDir, "--port", "0");
        Assert.NotEqual(0, res.ExitCode);
        Assert.Contains("--local", res.Stderr);
        Assert.Single(res.Stderr.Trim().Split('\n'));
    }

    [Fact]
    public void Failures_map_to_openai_statuses()
    {
        Assert.Equal(503, OpenAiError.From(new PetalsSharp.Swarm.SwarmException("no server holds block 1")).Status);
        Assert.Equal(400, OpenAiError.From(new ArgumentException("bad")).Status);
        Assert.Equal(400, OpenAiError.From(new NotSupportedException("no")).Status);
        Assert.Equal(500, OpenAiError.From(new InvalidCastException("bug")).Status);
    }
}
