using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PetalsSharp.Api.Chat;

namespace PetalsSharp.Api.OpenAi;

/// <summary>A Kestrel (HTTP/1.1) web app serving <see cref="OpenAiEndpoints"/> for one model.</summary>
public static class OpenAiServer
{
    /// <summary>The default request body limit: 8 MiB (Kestrel's own is 30 MB).</summary>
    public const long DefaultMaxRequestBytes = 8L << 20;

    /// <summary>
    /// Builds the app listening on <paramref name="host"/>:<paramref name="port"/> (port 0 = any free port). Start it
    /// with <c>StartAsync</c>; <see cref="Url"/> then says where it listens. Other front doors can map onto it too.
    /// A request body over <paramref name="maxRequestBytes"/> is answered 413 while it streams in; the default,
    /// <see cref="DefaultMaxRequestBytes"/>, holds a JSON-escaped prompt for a context of 100k+ tokens.
    /// </summary>
    public static WebApplication Build(PetalsChatClient chat, string host = "127.0.0.1", int port = 8000,
        long maxRequestBytes = DefaultMaxRequestBytes)
    {
        if (port is < 0 or > 65535) throw new ArgumentOutOfRangeException(nameof(port), $"port must be in [0, 65535] (got {port})");
        if (maxRequestBytes <= 0) throw new ArgumentOutOfRangeException(nameof(maxRequestBytes), $"the request size limit must be positive (got {maxRequestBytes})");
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = maxRequestBytes;
            void Http1(ListenOptions l) => l.Protocols = HttpProtocols.Http1;
            if (host == "localhost") k.ListenLocalhost(port, Http1);
            else if (IPAddress.TryParse(host, out var ip)) k.Listen(ip, port, Http1);
            else throw new ArgumentException($"host must be an IP address or localhost (got '{host}')");
        });
        var app = builder.Build();
        app.MapOpenAiEndpoints(chat);
        return app;
    }

    /// <summary>The first address a started app listens on, e.g. <c>http://127.0.0.1:8000</c>.</summary>
    public static string Url(WebApplication app) =>
        app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
}
