using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Text.Json.Nodes;
using PetalsSharp.Api.OpenAi;
using Xunit;

namespace PetalsSharp.Tests.Api;

/// <summary>
/// End to end with the official <c>openai</c> npm package: the SDK talks to our endpoints (in-process on an
/// ephemeral port) over the two-server swarm. The package is installed once into ~/.cache/petals-tests/npm
/// (or $PETALS_NPM_CACHE); without node/npm, or when the install fails (offline), the test is skipped.
/// </summary>
[Trait("Category", "Processes")]
[Collection(ApiSwarmCollection.Name)]
public sealed class OpenAiNpmTests(ApiSwarm swarm)
{
    const string OpenAiVersion = "4.95.0";

    static string ScriptPath([CallerFilePath] string self = "") => Path.Combine(Path.GetDirectoryName(self)!, "js", "openai-e2e.cjs");

    [SkippableFact]
    public async Task The_official_openai_sdk_chats_completes_streams_and_sees_errors()
    {
        var dir = await InstallOpenAiAsync();
        Skip.If(!File.Exists(ScriptPath()), $"script not found at {ScriptPath()} (sources not beside the test build)");
        await using var app = OpenAiServer.Build(swarm.RemoteChat(), "127.0.0.1", 0);
        await app.StartAsync();
        var run = await RunAsync("node", [ScriptPath()], new()
        {
            ["OPENAI_DIR"] = dir, ["BASE_URL"] = OpenAiServer.Url(app) + "/v1", ["MODEL"] = swarm.ModelId,
        });
        Assert.True(run.ExitCode == 0, $"node failed ({run.ExitCode}):\n{run.Stdout}\n{run.Stderr}");
        var r = JsonNode.Parse(run.Stdout.Trim().Split('\n')[^1])!;

        Assert.Equal(swarm.ModelId, (string?)r["models"]![0]);
        var chat = (string)r["chat"]!["text"]!;
        Assert.NotEmpty(chat);
        Assert.Equal(chat, (string?)r["chatStream"]!["text"]);
        Assert.Equal((string?)r["chat"]!["finish"], (string?)r["chatStream"]!["finish"]);
        Assert.True((int)r["chat"]!["usage"]!["completion_tokens"]! > 0);
        Assert.Equal((string?)r["completion"]!["text"], (string?)r["completionStream"]!["text"]);
        Assert.NotEmpty((string)r["completion"]!["text"]!);

        using var embedder = new PetalsSharp.Api.Chat.PetalsEmbeddingGenerator(swarm.Local, swarm.ModelId);
        var expected = await embedder.GenerateAsync(["a cat", "Tell me about cats"]);
        var vectors = r["embeddings"]!["vectors"]!.AsArray();
        Assert.Equal(2, vectors.Count);
        for (int i = 0; i < 2; i++)
        {
            var got = vectors[i]!.AsArray().Select(x => (float)x!).ToArray();
            var want = expected[i].Vector.ToArray();
            Assert.Equal(want.Length, got.Length);
            Assert.True(want.Zip(got, (a, b) => Math.Abs(a - b)).Max() <= 1e-4f, $"embedding {i} differs from the local one");
        }

        var n2 = r["errors"]!["n2"]!;
        Assert.True((bool)n2["isApiError"]!);
        Assert.Equal(400, (int)n2["status"]!);
        Assert.Equal("n", (string?)n2["param"]);
        var unknown = r["errors"]!["unknownModel"]!;
        Assert.True((bool)unknown["isApiError"]!);
        Assert.Equal(404, (int)unknown["status"]!);
        Assert.Equal("model_not_found", (string?)unknown["code"]);
    }

    /// <summary>The folder holding node_modules/openai, installing it once; skips when npm cannot.</summary>
    static async Task<string> InstallOpenAiAsync()
    {
        var root = Environment.GetEnvironmentVariable("PETALS_NPM_CACHE")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "petals-tests", "npm");
        var dir = Path.Combine(root, "openai-" + OpenAiVersion);
        if (File.Exists(Path.Combine(dir, "node_modules", "openai", "package.json"))) return dir;
        Skip.If(!await WorksAsync("node", "--version"), "node is not installed");
        Skip.If(!await WorksAsync("npm", "--version"), "npm is not installed");
        Directory.CreateDirectory(dir);
        var install = await RunAsync("npm", ["install", "--no-audit", "--no-fund", "--prefix", dir, $"openai@{OpenAiVersion}"], []);
        Skip.If(install.ExitCode != 0, $"npm install openai@{OpenAiVersion} failed (offline?): {install.Stderr.Trim()}");
        return dir;
    }

    static async Task<bool> WorksAsync(string file, string arg)
    {
        try { return (await RunAsync(file, [arg], [])).ExitCode == 0; }
        catch (System.ComponentModel.Win32Exception) { return false; }
    }

    sealed record Run(int ExitCode, string Stdout, string Stderr);

    static async Task<Run> RunAsync(string file, string[] args, Dictionary<string, string> env)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in env) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(5));
        try { await p.WaitForExitAsync(timeout.Token); }
        catch (OperationCanceledException)
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} {string.Join(' ', args)} did not finish in 5 minutes");
        }
        return new Run(p.ExitCode, await stdout, await stderr);
    }
}
