using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using PetalsSharp.Dht;

namespace PetalsSharp.Api.Dashboard;

/// <summary>A standalone dashboard (<c>petals dashboard</c>): a <see cref="SwarmWatcher"/> and a Kestrel HTTP/1.1 site.</summary>
public sealed class DashboardServer : IAsyncDisposable
{
    readonly WebApplication _app;

    DashboardServer(WebApplication app, SwarmWatcher watcher, string address)
    {
        _app = app;
        Watcher = watcher;
        Address = address;
    }

    /// <summary>The swarm reader behind the page.</summary>
    public SwarmWatcher Watcher { get; }

    /// <summary>"host:port" with the real port.</summary>
    public string Address { get; }

    /// <summary>The page's URL.</summary>
    public string Url => $"http://{Address}/";

    /// <summary>Joins the swarm and listens on <paramref name="host"/>:<paramref name="port"/> (0 = any free port).</summary>
    public static async Task<DashboardServer> StartAsync(IEnumerable<string> initialPeers, SwarmKey? swarmKey, string host, int port,
        DashboardSettings settings, ILoggerFactory? loggerFactory = null, CancellationToken ct = default)
    {
        if (port is < 0 or > 65535) throw new ArgumentException($"port {port} is outside [0, 65535]");
        var address = host.Equals("localhost", StringComparison.OrdinalIgnoreCase) ? IPAddress.Loopback
            : IPAddress.TryParse(host, out var ip) ? ip
            : (await Dns.GetHostAddressesAsync(host, ct)).FirstOrDefault() ?? throw new ArgumentException($"host '{host}' has no address");
        var watcher = await SwarmWatcher.StartAsync(initialPeers, swarmKey, settings, loggerFactory?.CreateLogger("petals.dashboard"), ct);
        try
        {
            var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
            {
                ApplicationName = "PetalsSharp.Dashboard", ContentRootPath = AppContext.BaseDirectory,
            });
            builder.Logging.ClearProviders();
            builder.Services.AddSingleton<IHostLifetime, NoSignals>();
            builder.WebHost.ConfigureKestrel(k => k.Listen(address, port, l => l.Protocols = HttpProtocols.Http1));
            var app = builder.Build();
            app.MapDashboard(() => watcher.Current);
            await app.StartAsync(ct);
            var bound = new Uri(app.Urls.First());
            string shown = IPAddress.Any.Equals(address) || IPAddress.IPv6Any.Equals(address) ? "127.0.0.1"
                : address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{address}]" : address.ToString();
            return new DashboardServer(app, watcher, $"{shown}:{bound.Port}");
        }
        catch
        {
            await watcher.DisposeAsync();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
        await Watcher.DisposeAsync();
    }

    /// <summary>The host must not take over Ctrl+C/SIGTERM: the CLI (or the test) decides when to stop.</summary>
    sealed class NoSignals : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;
        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
