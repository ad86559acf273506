using System.Globalization;
using Grpc.Core;
using PetalsSharp.Server;
using PetalsSharp.Wire.V1;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Server;

/// <summary>A server with a Prometheus endpoint on an ephemeral port.</summary>
public sealed class MetricsFixture : ServerFixture
{
    protected override ServerOptions Options => base.Options with { MetricsPort = 0 };
}

/// <summary>
/// Scrapes a real server's <c>/metrics</c> over HTTP/1.1 before and after real traffic: steps and forwards count,
/// the latency histogram fills, the session and cache gauges follow an open session, and a bad request shows up
/// under its gRPC status.
/// </summary>
public sealed class MetricsTests(MetricsFixture f) : IClassFixture<MetricsFixture>
{
    static readonly HttpClient Http = new() { Timeout = TimeSpan.FromSeconds(30) };

    async Task<Dictionary<string, double>> ScrapeAsync()
    {
        using var reply = await Http.GetAsync(f.Server.MetricsUrl);
        reply.EnsureSuccessStatusCode();
        Assert.StartsWith("text/plain", reply.Content.Headers.ContentType!.MediaType);
        var samples = new Dictionary<string, double>();
        foreach (var line in (await reply.Content.ReadAsStringAsync()).Split('\n'))
        {
            if (line.Length == 0 || line.StartsWith('#')) continue;
            int space = line.LastIndexOf(' ');
            samples[line[..space]] = double.Parse(line[(space + 1)..], CultureInfo.InvariantCulture);
        }
        return samples;
    }

    static double Get(Dictionary<string, double> samples, string key) => samples.GetValueOrDefault(key);

    [Fact]
    public async Task Scrapes_move_with_steps_forwards_sessions_and_errors()
    {
        Assert.NotNull(f.Server.MetricsUrl);
        var before = await ScrapeAsync();
        Assert.Equal(0, Get(before, "petals_server_sessions_open"));
        Assert.True(Get(before, "petals_server_cache_tokens_total") > 0);
        int hidden = f.Server.Config.HiddenSize;

        using (var session = await f.Client.OpenAsync(ServerClient.Open(batch: 1, maxLength: 16, id: "metrics-session")))
        {
            using (var prompt = randn(1, 4, hidden)) await session.StepAsync(prompt);   // [batch, seq, hidden]
            for (int i = 0; i < 2; i++)
                using (var token = randn(1, 1, hidden)) await session.StepAsync(token);
            var open = await ScrapeAsync();
            Assert.Equal(1, Get(open, "petals_server_sessions_open"));
            Assert.Equal(16, Get(open, "petals_server_cache_tokens_used"));   // batch 1 × max_length 16
            await session.CloseAsync();
        }
        using (var x = randn(2, 3, hidden)) (await f.Client.ForwardAsync(x, ServerClient.Header(0, 3))).Dispose();
        var bad = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            using var x = randn(1, 2, hidden);
            await f.Client.ForwardAsync(x, ServerClient.Header(0, 9));   // beyond the served span
        });
        Assert.Equal(StatusCode.InvalidArgument, bad.StatusCode);

        var after = await ScrapeAsync();
        const string inference = "rpc=\"inference\"", forward = "rpc=\"forward\"";
        Assert.Equal(3, Get(after, $"petals_server_steps_total{{{inference}}}") - Get(before, $"petals_server_steps_total{{{inference}}}"));
        Assert.Equal(1, Get(after, $"petals_server_steps_total{{{forward}}}") - Get(before, $"petals_server_steps_total{{{forward}}}"));
        double count = Get(after, $"petals_server_step_duration_seconds_count{{{inference}}}");
        Assert.True(count >= 3);
        Assert.Equal(count, Get(after, $"petals_server_step_duration_seconds_bucket{{{inference},le=\"+Inf\"}}"));
        Assert.True(Get(after, $"petals_server_step_duration_seconds_sum{{{inference}}}") > 0);
        Assert.True(Get(after, $"petals_server_step_duration_seconds_bucket{{{inference},le=\"10\"}}")
            >= Get(after, $"petals_server_step_duration_seconds_bucket{{{inference},le=\"0.001\"}}"));
        var invalid = "petals_server_errors_total{rpc=\"forward\",status=\"InvalidArgument\"}";
        Assert.Equal(1, Get(after, invalid) - Get(before, invalid));
        Assert.Equal(0, Get(after, "petals_server_sessions_open"));
        Assert.Equal(0, Get(after, "petals_server_cache_tokens_used"));
    }

    [Fact]
    public async Task The_gRPC_port_still_speaks_prior_knowledge_h2c()
    {
        // Metrics live on their own HTTP/1.1 port, so the block service's cleartext HTTP/2 endpoint is unchanged.
        var info = await f.Client.Raw.InfoAsync(new InfoRequest());
        Assert.Equal(3, info.EndBlock);
        Assert.NotEqual(new Uri(f.Server.MetricsUrl!).Port, int.Parse(f.Server.Address.Split(':')[1]));
    }
}
