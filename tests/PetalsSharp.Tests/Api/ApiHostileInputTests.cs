using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using PetalsSharp.Server;
using Xunit;

namespace PetalsSharp.Tests.Api;

/// <summary>
/// Hostile prompts against a real <c>petals api --local</c> process over the built-in stories260K, whose
/// tokenizer has no pre-tokenizer, so a prompt reaches BPE as one word (issue 23, attacks 2 and 6).
/// </summary>
[Trait("Category", "Processes")]
public sealed class ApiHostileInputTests : IAsyncLifetime
{
    const long MaxRequestBytes = 4_000_000;
    Process _api = null!;
    HttpClient _http = null!;

    public async Task InitializeAsync()
    {
        var modelDir = PetalsSharp.Cli.Commands.DemoModel.Ensure();
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { ServerProcess.DefaultPetalsDll, "api", "--model", modelDir, "--local", "--port", "0", "--max-request-bytes", $"{MaxRequestBytes}" })
            psi.ArgumentList.Add(a);
        psi.Environment[ParentWatchdog.Variable] = Environment.ProcessId.ToString();
        _api = Process.Start(psi)!;
        var url = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var log = new StringBuilder();
        _api.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (log) log.AppendLine(e.Data);
            if (e.Data.StartsWith("listening on ", StringComparison.Ordinal)) url.TrySetResult(e.Data["listening on ".Length..]);
        };
        _api.ErrorDataReceived += (_, e) => { lock (log) log.AppendLine(e.Data); };
        _api.BeginOutputReadLine();
        _api.BeginErrorReadLine();
        if (await Task.WhenAny(url.Task, Task.Delay(TimeSpan.FromSeconds(90))) != url.Task)
            throw new TimeoutException($"no 'listening on' line:\n{log}");
        _http = new HttpClient { BaseAddress = new Uri(await url.Task), Timeout = TimeSpan.FromMinutes(5) };
    }

    public Task DisposeAsync()
    {
        _http?.Dispose();
        _api.Kill(entireProcessTree: true);
        _api.WaitForExit(10_000);
        _api.Dispose();
        return Task.CompletedTask;
    }

    /// <summary>User plus system CPU time of the api process, from /proc/PID/stat (clock ticks of 10 ms).</summary>
    TimeSpan CpuTime()
    {
        var stat = File.ReadAllText($"/proc/{_api.Id}/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return TimeSpan.FromMilliseconds((long.Parse(fields[11]) + long.Parse(fields[12])) * 10);
    }

    Task<HttpResponseMessage> PostAsync(string path, byte[] body) =>
        _http.PostAsync(path, new ByteArrayContent(body) { Headers = { { "Content-Type", "application/json" } } });

    static byte[] Json(string json) => Encoding.UTF8.GetBytes(json);

    static string Words(int bytes) => string.Concat(Enumerable.Repeat("hello wor ", bytes / 10));

    [Fact]
    public async Task A_megabyte_prompt_is_refused_before_tokenizing_in_well_under_a_second_of_cpu()
    {
        // Warm up: the first request pays for JIT, which is not what is measured.
        var warm = await PostAsync("/v1/completions", Json($$"""{"model":"stories260K","prompt":"{{Words(100_000)}}","max_tokens":1}"""));
        Assert.Equal(HttpStatusCode.BadRequest, warm.StatusCode);

        foreach (var (path, body) in new[]
        {
            ("/v1/completions", $$"""{"model":"stories260K","prompt":"{{Words(1_000_000)}}","max_tokens":1}"""),
            ("/v1/chat/completions", $$"""{"model":"stories260K","messages":[{"role":"user","content":"{{Words(1_000_000)}}"}],"max_tokens":1}"""),
        })
        {
            var before = CpuTime();
            var res = await PostAsync(path, Json(body));
            var used = CpuTime() - before;
            var text = await res.Content.ReadAsStringAsync();
            Assert.Equal(HttpStatusCode.BadRequest, res.StatusCode);
            Assert.Equal("context_length_exceeded", (string?)JsonNode.Parse(text)!["error"]!["code"]);
            // Before the fix a 1 MB prompt took 110 s of CPU (quadratic BPE) before the same refusal.
            Assert.True(used < TimeSpan.FromSeconds(1), $"{path}: {used.TotalSeconds:F2} s of CPU for a refusal");
        }
    }

    [Fact]
    public async Task A_long_prompt_that_fits_the_byte_bound_tokenizes_in_near_linear_time()
    {
        // 20 KB passes the byte bound (4 × longest token × 512), so it is tokenized in full and refused on its count.
        var before = CpuTime();
        var res = await PostAsync("/v1/completions", Json($$"""{"model":"stories260K","prompt":"{{Words(16_000)}}","max_tokens":1}"""));
        var used = CpuTime() - before;
        var text = await res.Content.ReadAsStringAsync();
        Assert.Equal(HttpStatusCode.BadRequest, res.StatusCode);
        var error = JsonNode.Parse(text)!["error"]!;
        Assert.Contains("tokens, the model's context is 512", (string?)error["message"]);
        Assert.Equal("context_length_exceeded", (string?)error["code"]);
        Assert.True(used < TimeSpan.FromSeconds(5), $"{used.TotalSeconds:F2} s of CPU");
    }

    [Fact]
    public async Task A_body_over_the_request_limit_gets_413()
    {
        var res = await PostAsync("/v1/completions", Json($$"""{"model":"stories260K","prompt":"{{Words((int)MaxRequestBytes + 100)}}"}"""));
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, res.StatusCode);
        Assert.Equal("request_too_large", (string?)JsonNode.Parse(await res.Content.ReadAsStringAsync())!["error"]!["code"]);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_client_that_disconnects_stops_its_generation(bool stream)
    {
        var body = $$"""{"model":"stories260K","prompt":"Once","max_tokens":500,"temperature":0,"stream":{{(stream ? "true" : "false")}},"petals":{"ignore_eos":true} }""";
        using var cts = new CancellationTokenSource();
        var start = CpuTime();
        var request = _http.PostAsync("/v1/completions", new ByteArrayContent(Json(body)) { Headers = { { "Content-Type", "application/json" } } },
            cts.Token);
        // 500 tokens take many seconds of CPU here: wait until the generation is clearly running, then hang up.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (CpuTime() - start < TimeSpan.FromSeconds(0.5) && !request.IsCompleted && DateTime.UtcNow < deadline) await Task.Delay(50);
        Assert.False(request.IsCompleted, "the generation finished before the client could hang up");
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => request);

        // Idle means under 50 ms of CPU in a second; a generation left running would keep a core busy for half a minute.
        var idleBy = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        var last = CpuTime();
        while (true)
        {
            await Task.Delay(1000);
            var now = CpuTime();
            if (now - last < TimeSpan.FromMilliseconds(50)) break;
            Assert.True(DateTime.UtcNow < idleBy, $"the api still uses {(now - last).TotalMilliseconds} ms of CPU a second after the client left");
            last = now;
        }
    }

    public static TheoryData<string, string> BadText() => new()
    {
        { "/v1/completions", "invalid UTF-8 in prompt" },
        { "/v1/completions", "lone surrogate in prompt" },
        { "/v1/chat/completions", "invalid UTF-8 in content" },
        { "/v1/chat/completions", "lone surrogate in content" },
        { "/v1/embeddings", "lone surrogate in input" },
        { "/v1/completions", "invalid UTF-8 in a field name" },
    };

    [Theory]
    [MemberData(nameof(BadText))]
    public async Task Bad_text_encodings_get_400_invalid_request_error(string path, string what)
    {
        var bad = what.StartsWith("invalid UTF-8", StringComparison.Ordinal) ? "\u0001" : "\\ud800abc";
        var json = what.EndsWith("prompt", StringComparison.Ordinal) ? $$"""{"model":"stories260K","prompt":"ab{{bad}}c","max_tokens":1}"""
            : what.EndsWith("content", StringComparison.Ordinal) ? $$"""{"model":"stories260K","messages":[{"role":"user","content":"ab{{bad}}c"}],"max_tokens":1}"""
            : what.EndsWith("input", StringComparison.Ordinal) ? $$"""{"model":"stories260K","input":"ab{{bad}}c"}"""
            : $$"""{"model":"stories260K","prompt":"abc","x{{bad}}":1}""";
        var body = Json(json);
        // \u0001 marks where a raw invalid byte goes (0xFF never appears in UTF-8).
        for (int i = 0; i < body.Length; i++) if (body[i] == 1) body[i] = 0xFF;
        var res = await PostAsync(path, body);
        var text = await res.Content.ReadAsStringAsync();
        Assert.Equal(HttpStatusCode.BadRequest, res.StatusCode);
        Assert.Equal("invalid_request_error", (string?)JsonNode.Parse(text)!["error"]!["type"]);
        Assert.DoesNotContain("Exception", text);
    }
}
