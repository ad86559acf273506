using System.Collections.Concurrent;
using Grpc.Net.Client;

namespace PetalsSharp.Wire;

/// <summary>How a channel to a peer is set up (block servers and DHT nodes differ only in these numbers).</summary>
/// <param name="MaxMessageBytes">Largest message sent or accepted.</param>
public sealed record PeerChannelOptions(int MaxMessageBytes)
{
    /// <summary>How long opening the TCP connection may take.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Cap of the reconnect backoff; null keeps gRPC's default.</summary>
    public TimeSpan? MaxReconnectBackoff { get; init; }

    /// <summary>How long an idle pooled connection is kept; null keeps the handler's default.</summary>
    public TimeSpan? PooledConnectionIdleTimeout { get; init; }

    /// <summary>Open more HTTP/2 connections when one runs out of streams (many concurrent sessions to one server).</summary>
    public bool MultipleHttp2Connections { get; init; } = true;
}

/// <summary>
/// One HTTP/2 channel per peer address, and the one place channels to peers are made. Authentication is applied per
/// call (see <c>SwarmAuth</c>), so one channel serves every caller. Peers come and go (and DHT replies may name
/// addresses that never answer), so channels idle for a while are dropped once the cache grows large.
/// </summary>
public sealed class PeerChannels(PeerChannelOptions options) : IDisposable
{
    const int SweepAbove = 1024;
    static readonly TimeSpan IdleAfter = TimeSpan.FromMinutes(5);
    readonly ConcurrentDictionary<string, (GrpcChannel Channel, long LastUsedTicks)> _channels = new(StringComparer.OrdinalIgnoreCase);
    bool _disposed;

    public PeerChannelOptions Options { get; } = options;

    /// <summary>The cached channel to <paramref name="address"/> (<c>HOST:PORT</c> or a URL), created on first use.</summary>
    public GrpcChannel Get(string address)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        long now = Environment.TickCount64;
        var entry = _channels.AddOrUpdate(address, a => (Create(a, Options), now), (_, e) => (e.Channel, now));
        if (_channels.Count > SweepAbove) Sweep(now);
        return entry.Channel;
    }

    void Sweep(long now)
    {
        foreach (var (address, entry) in _channels)
        {
            if (now - entry.LastUsedTicks < IdleAfter.TotalMilliseconds || !_channels.TryRemove(new(address, entry))) continue;
            // A call that took the channel just before the sweep gets 30 s to finish; DHT calls have 2 s deadlines.
            _ = Task.Delay(TimeSpan.FromSeconds(30)).ContinueWith(_ => entry.Channel.Dispose(), TaskScheduler.Default);
        }
    }

    /// <summary>
    /// A new channel the caller owns: HTTP/2 without TLS, large messages both ways, and fast first reconnects (the
    /// default backoff makes the first call after a peer starts wait about a second).
    /// </summary>
    public static GrpcChannel Create(string address, PeerChannelOptions options)
    {
        var handler = new SocketsHttpHandler
        {
            EnableMultipleHttp2Connections = options.MultipleHttp2Connections,
            ConnectTimeout = options.ConnectTimeout,
            KeepAlivePingDelay = TimeSpan.FromSeconds(30),
            KeepAlivePingTimeout = TimeSpan.FromSeconds(20),
        };
        if (options.PooledConnectionIdleTimeout is { } idle) handler.PooledConnectionIdleTimeout = idle;
        var settings = new GrpcChannelOptions
        {
            MaxReceiveMessageSize = options.MaxMessageBytes,
            MaxSendMessageSize = options.MaxMessageBytes,
            InitialReconnectBackoff = TimeSpan.FromMilliseconds(50),
            HttpHandler = handler,
        };
        if (options.MaxReconnectBackoff is { } max) settings.MaxReconnectBackoff = max;
        return GrpcChannel.ForAddress(address.Contains("://") ? address : "http://" + address, settings);
    }

    /// <summary>Closes every channel; calls still running on them fail.</summary>
    public void Dispose()
    {
        _disposed = true;
        foreach (var entry in _channels.Values) entry.Channel.Dispose();
        _channels.Clear();
    }
}
