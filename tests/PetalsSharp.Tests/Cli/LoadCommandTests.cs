using System.Text.Json;
using PetalsSharp.Server;
using Xunit;

namespace PetalsSharp.Tests.Cli;

/// <summary>
/// <c>petals load</c> (issue 18) against two real servers of stories260K: 64 sessions at once all finish, each with
/// exactly the greedy tokens its prompt gives alone, and the JSON carries the contract's fields.
/// </summary>
[Trait("Category", "Processes")]
public sealed class LoadCommandTests
{
    [SkippableFact]
    public async Task Sixty_four_concurrent_sessions_each_get_the_tokens_they_get_alone()
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        string model = Fixtures.Stories260KDir!;
        using var a = await ServerProcess.StartAsync(model, 0, 3, "--metrics-port", "0");
        using var b = await ServerProcess.StartAsync(model, 3, 5, "--metrics-port", "0");
        const int sessions = 64, newTokens = 12;
        var run = await CliRunner.RunAsync("load", "--model", model, "--peers", $"{a.Address},{b.Address}",
            "--sessions", $"{sessions}", "--prompt-tokens", "10", "--new-tokens", $"{newTokens}", "--json");
        Assert.True(run.ExitCode == 0, run.Stderr);
        using var doc = JsonDocument.Parse(run.Stdout);
        var r = doc.RootElement;
        foreach (var field in new[] { "sessions", "aggregate_tok_s", "p50_ms", "p95_ms", "p99_ms", "errors", "busy" })
            Assert.True(r.TryGetProperty(field, out _), $"no \"{field}\" in {run.Stdout}");
        Assert.Equal(sessions, r.GetProperty("sessions").GetInt32());
        Assert.Equal(0, r.GetProperty("errors").GetInt32());
        Assert.Equal(0, r.GetProperty("mismatches").GetInt32());
        Assert.True(r.GetProperty("checked").GetBoolean());
        Assert.Equal(sessions * newTokens, r.GetProperty("tokens").GetInt64());
        Assert.True(r.GetProperty("aggregate_tok_s").GetDouble() > 0);
        double p50 = r.GetProperty("p50_ms").GetDouble(), p95 = r.GetProperty("p95_ms").GetDouble(), p99 = r.GetProperty("p99_ms").GetDouble();
        Assert.True(p50 > 0 && p50 <= p95 && p95 <= p99, run.Stdout);
        // Continuous batching ran: the servers' passes carried more steps than there were passes.
        foreach (var server in new[] { a, b })
        {
            var samples = await Server.HostileWireTests.ScrapeAsync(await Server.HostileWireTests.MetricsUrlAsync(server));
            double passes = samples.GetValueOrDefault("petals_server_batch_passes_total"), steps = samples.GetValueOrDefault("petals_server_batch_steps_total");
            Assert.True(passes > 0 && steps > passes, $"{server.Address}: {steps} steps in {passes} passes");
        }
    }

    /// <summary>
    /// Two servers whose caches hold one session each (80 tokens of room, half of it per client, sessions of 32), and six sessions at once:
    /// servers answer busy, and the clients route to the other server or wait for room instead of failing. Every
    /// session finishes with its solo tokens, and no server ever held more than its budget (it refuses instead).
    /// </summary>
    [SkippableFact]
    public async Task Sessions_beyond_the_cache_room_wait_for_it_and_all_finish()
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        string model = Fixtures.Stories260KDir!;
        using var a = await ServerProcess.StartAsync(model, 0, 5, "--cache-tokens", "80", "--metrics-port", "0");
        using var b = await ServerProcess.StartAsync(model, 0, 5, "--cache-tokens", "80", "--metrics-port", "0");
        var run = await CliRunner.RunAsync("load", "--model", model, "--peers", $"{a.Address},{b.Address}",
            "--sessions", "6", "--prompt-tokens", "8", "--new-tokens", "24", "--json");
        Assert.True(run.ExitCode == 0, run.Stderr);
        using var doc = JsonDocument.Parse(run.Stdout);
        var r = doc.RootElement;
        Assert.True(r.GetProperty("errors").GetInt32() == 0, run.Stdout);
        Assert.Equal(0, r.GetProperty("mismatches").GetInt32());
        Assert.Equal(6 * 24, r.GetProperty("tokens").GetInt64());
        // The servers did say busy (6 sessions, room for 2 at a time), and neither logged a failure.
        double busy = 0;
        foreach (var server in new[] { a, b })
        {
            var samples = await Server.HostileWireTests.ScrapeAsync(await Server.HostileWireTests.MetricsUrlAsync(server));
            busy += samples.GetValueOrDefault("petals_server_errors_total{rpc=\"inference\",status=\"ResourceExhausted\"}");
            double peak = samples.GetValueOrDefault("petals_server_kv_pages_peak_bytes"), budget = samples.GetValueOrDefault("petals_server_kv_budget_bytes");
            Assert.True(peak > 0 && peak <= budget, $"{server.Address}: at most {peak} bytes of KV pages for a budget of {budget}");
            Assert.DoesNotContain("fail:", server.Log, StringComparison.Ordinal);
        }
        Assert.True(busy > 0, "no server answered busy: the test did not exhaust the cache");
    }

    [Theory]
    [InlineData("--sessions", "0", "--sessions must be at least 1")]
    [InlineData("--new-tokens", "0", "--new-tokens must be at least 1")]
    public async Task Bad_counts_get_a_one_line_error(string option, string value, string message)
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        var run = await CliRunner.RunAsync("load", "--model", Fixtures.Stories260KDir!, "--peers", "127.0.0.1:1", option, value);
        Assert.NotEqual(0, run.ExitCode);
        Assert.Contains(message, run.Stderr);
        Assert.Single(run.Stderr.Trim().Split('\n'));
    }

    [Fact]
    public async Task Without_a_swarm_it_says_what_to_give()
    {
        var run = await CliRunner.RunAsync("load", "--model", "/nonexistent", "--sessions", "2");
        Assert.NotEqual(0, run.ExitCode);
        Assert.Contains("give --peers or --initial-peers", run.Stderr);
        Assert.Single(run.Stderr.Trim().Split('\n'));
    }
}
