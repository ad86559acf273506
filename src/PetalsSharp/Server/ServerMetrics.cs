using System.Diagnostics;
using System.Diagnostics.Metrics;
using Grpc.Core;

namespace PetalsSharp.Server;

/// <summary>
/// A server's instruments (System.Diagnostics.Metrics). Each server has its own <see cref="Meter"/> whose scope is
/// the server, so an exporter can read one server's numbers even when several run in one process (as in tests).
/// Names follow OpenTelemetry; <see cref="PrometheusExporter"/> turns them into Prometheus names (docs/dashboard.md).
/// </summary>
internal sealed class ServerMetrics : IDisposable
{
    public const string MeterName = "PetalsSharp.Server";

    /// <summary>Latency buckets (seconds): a decode step on CPU takes milliseconds, a long prefill seconds.</summary>
    public static readonly IReadOnlyList<double> LatencyBuckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

    readonly Counter<long> _steps;
    readonly Histogram<double> _stepDuration;
    readonly Counter<long> _errors;

    public ServerMetrics(BlockServer server)
    {
        Meter = new Meter(new MeterOptions(MeterName) { Scope = server, Version = Wire.Protocol.SoftwareVersion });
        _steps = Meter.CreateCounter<long>("petals.server.steps", description: "Requests served: inference steps, forward, backward and push calls, by RPC kind");
        _stepDuration = Meter.CreateHistogram<double>("petals.server.step.duration", unit: "s",
            description: "Time to serve one inference step or one forward/backward call, by RPC kind",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = LatencyBuckets });
        _errors = Meter.CreateCounter<long>("petals.server.errors", description: "Failed RPCs by RPC kind and gRPC status");
        Meter.CreateObservableGauge("petals.server.sessions.open", () => server.ActiveSessions, description: "Open inference sessions");
        Meter.CreateObservableGauge("petals.server.cache.tokens.used", () => CacheTokens(server).Used, description: "KV-cache room promised to open sessions (their max_length), in tokens of one row across the span");
        Meter.CreateObservableGauge("petals.server.cache.tokens.total", () => CacheTokens(server).Total, description: "KV-cache room in all, in tokens of one row across the span");
        Meter.CreateObservableGauge("petals.server.cache.tokens.held", () => HeldTokens(server),
            description: "KV-cache pages sessions hold now (memory, as they grew), in tokens of one row across the span");
        Meter.CreateObservableGauge("petals.server.kv.pages.bytes", () => server.Current?.Stack.Pages.AllocatedBytes ?? 0, unit: "By",
            description: "Memory the KV page pool holds: the most pages in use at once (pages are recycled, not freed)");
        Meter.CreateObservableGauge("petals.server.kv.pages.peak.bytes", () => server.Current?.Stack.Pages.PeakBytes ?? 0, unit: "By",
            description: "The most memory the KV page pool has held at once");
        Meter.CreateObservableGauge("petals.server.kv.budget.bytes",
            () => server.Current is { } span ? span.CacheBudget.TotalPages * span.Stack.Pages.PageBytes : 0, unit: "By",
            description: "Memory the KV pages may take at most (--cache-tokens or --cache-bytes)");
        Meter.CreateObservableCounter("petals.server.batch.passes", () => server.Scheduler.Joined.Runs,
            description: "Fused passes of inference steps (continuous batching: one or more sessions per pass)");
        Meter.CreateObservableCounter("petals.server.batch.steps", () => server.Scheduler.Joined.Items,
            description: "Inference steps those passes carried; steps ÷ passes is the mean batch");
    }

    public Meter Meter { get; }

    static long HeldTokens(BlockServer server) =>
        server.Current is { } span && span.End > span.Start ? span.CacheBudget.HeldSlots / (span.End - span.Start) : 0;

    static (long Used, long Total) CacheTokens(BlockServer server)
    {
        if (server.Current is not { } span || span.End <= span.Start) return (0, 0);
        long total = span.CacheBudget.TotalSlots / (span.End - span.Start);
        return (total - span.CacheBudget.CacheTokensLeft, total);
    }

    /// <summary>One request of kind <paramref name="rpc"/> (inference, forward, backward, push) served in <paramref name="elapsed"/>.</summary>
    public void Served(string rpc, TimeSpan elapsed)
    {
        var tag = new KeyValuePair<string, object?>("rpc", rpc);
        _steps.Add(1, tag);
        _stepDuration.Record(elapsed.TotalSeconds, tag);
    }

    /// <summary>An RPC that ended with a non-OK gRPC status.</summary>
    public void Failed(string rpc, StatusCode status) =>
        _errors.Add(1, new KeyValuePair<string, object?>("rpc", rpc), new KeyValuePair<string, object?>("status", status.ToString()));

    /// <summary>A stopwatch for <see cref="Served"/>.</summary>
    public static long Now() => Stopwatch.GetTimestamp();

    public void Dispose() => Meter.Dispose();
}
