using System.Diagnostics.Metrics;
using PetalsSharp.Server;
using Xunit;

namespace PetalsSharp.Tests.Dashboard;

/// <summary>The text exposition format, on instruments of a private meter scope.</summary>
public sealed class PrometheusExporterTests
{
    [Fact]
    public void Renders_counters_gauges_and_cumulative_histograms_with_escaped_labels()
    {
        var scope = new object();
        using var meter = new Meter(new MeterOptions("test") { Scope = scope });
        using var exporter = PrometheusExporter.ForScope(scope);
        var counter = meter.CreateCounter<long>("demo.requests", description: "Requests");
        var histogram = meter.CreateHistogram<double>("demo.latency", unit: "s", advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.1, 1] });
        int gauge = 7;
        meter.CreateObservableGauge("demo.open", () => gauge);
        counter.Add(2, new KeyValuePair<string, object?>("kind", "a\"b"));
        counter.Add(3, new KeyValuePair<string, object?>("kind", "a\"b"));
        histogram.Record(0.05);
        histogram.Record(0.5);
        histogram.Record(5);

        var text = exporter.Scrape();
        Assert.Contains("# TYPE demo_requests_total counter\n", text);
        Assert.Contains("demo_requests_total{kind=\"a\\\"b\"} 5\n", text);
        Assert.Contains("# TYPE demo_latency_seconds histogram\n", text);
        Assert.Contains("demo_latency_seconds_bucket{le=\"0.1\"} 1\n", text);
        Assert.Contains("demo_latency_seconds_bucket{le=\"1\"} 2\n", text);
        Assert.Contains("demo_latency_seconds_bucket{le=\"+Inf\"} 3\n", text);
        Assert.Contains("demo_latency_seconds_sum 5.55\n", text);
        Assert.Contains("demo_latency_seconds_count 3\n", text);
        Assert.Contains("demo_open 7\n", text);
        gauge = 9;
        Assert.Contains("demo_open 9\n", exporter.Scrape());

        // Another scope's instruments stay out.
        using var other = new Meter(new MeterOptions("test") { Scope = new object() });
        other.CreateCounter<long>("other.requests").Add(1);
        Assert.DoesNotContain("other_requests", exporter.Scrape());
    }
}
