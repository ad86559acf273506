using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace PetalsSharp.Server;

/// <summary>
/// <c>GET /metrics</c> on a port of its own. The block service's port speaks cleartext HTTP/2 only (prior-knowledge
/// h2c needs an HTTP/2-only endpoint), and Prometheus scrapes over HTTP/1.1, so metrics cannot share it.
/// </summary>
public sealed class MetricsEndpoint : IAsyncDisposable
{
    readonly WebApplication _app;

    MetricsEndpoint(WebApplication app, string address)
    {
        _app = app;
        Address = address;
    }

    /// <summary>"host:port" with the real port.</summary>
    public string Address { get; }

    /// <summary>The scrape URL.</summary>
    public string Url => $"http://{Address}/metrics";

    /// <summary>Listens on <paramref name="address"/>:<paramref name="port"/> (0 = any free port) and serves <paramref name="exporter"/>.</summary>
    public static async Task<MetricsEndpoint> StartAsync(IPAddress address, int port, PrometheusExporter exporter, CancellationToken ct = default)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            ApplicationName = "PetalsSharp.Metrics", ContentRootPath = AppContext.BaseDirectory,
        });
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton<IHostLifetime, NoSignals>();
        builder.WebHost.ConfigureKestrel(k => k.Listen(address, port, l => l.Protocols = HttpProtocols.Http1));
        var app = builder.Build();
        app.MapGet("/metrics", () => Results.Text(exporter.Scrape(), PrometheusExporter.ContentType));
        await app.StartAsync(ct);
        var bound = new Uri(app.Urls.First());
        string host = IPAddress.Any.Equals(address) || IPAddress.IPv6Any.Equals(address) ? "127.0.0.1"
            : address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{address}]" : address.ToString();
        return new MetricsEndpoint(app, $"{host}:{bound.Port}");
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }

    /// <summary>The host must not take over Ctrl+C/SIGTERM: its owner decides when to stop.</summary>
    sealed class NoSignals : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;
        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
