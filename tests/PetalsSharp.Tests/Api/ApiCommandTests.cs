using System.Diagnostics;
using System.Net;
using System.Text.Json.Nodes;
using PetalsSharp.Api.OpenAi;
using PetalsSharp.Server;
using PetalsSharp.Tests.Cli;
using Xunit;

namespace PetalsSharp.Tests.Api;

/// <summary><c>petals api</c> as a child process over the swarm, its usage errors, and the error mapping.</summary>
[Collection(ApiSwarmCollection.Name)]
public sealed class ApiCommandTests(ApiSwarm swarm)
{
    [Fact]
    public async Task Petals_api_serves_the_swarm_and_prints_its_url()
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { ServerProcess.DefaultPetalsDll, "api", "--model", swarm.ModelDir, "--peers", string.Join(",", swarm.Peers), "--port", "0" })
            psi.ArgumentList.Add(a);
        psi.Environment[ParentWatchdog.Variable] = Environment.ProcessId.ToString();
        using var p = Process.Start(psi)!;
        try
        {
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
            Assert.True(await Task.WhenAny(url.Task, Task.Delay(TimeSpan.FromSeconds(90))) == url.Task, $"no 'listening on' line:\n{log}");
            using var http = new HttpClient { BaseAddress = new Uri(await url.Task) };
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
