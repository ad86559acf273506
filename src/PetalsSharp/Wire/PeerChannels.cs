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
/// call (see <c>SwarmAuth</c>), so one channel serves every caller. Peers come and go, and DHT replies or clients may
/// name addresses that never answer, so the cache is bounded: at most <see cref="MaxChannels"/> channels (the least
/// recently used go first) and none idle longer than <see cref="IdleTimeout"/>. A channel leaves the cache at once
/// but is disposed only when no call holds it: a <see cref="Rent"/> lease until it is disposed, a <see cref="Get"/>
/// for <see cref="GetGrace"/> after it (callers of Get give every call a shorter deadline).
/// </summary>
public sealed class PeerChannels : IDisposable
{
    /// <summary>Most channels kept; a new address past it evicts the least recently used one.</summary>
    public const int MaxChannels = 256;

    /// <summary>A channel unused this long is dropped.</summary>
    public static readonly TimeSpan IdleTimeout = TimeSpan.FromMinutes(2);

    /// <summary>How long a channel handed out by <see cref="Get"/> stays usable after it left the cache.</summary>
    public static readonly TimeSpan GetGrace = TimeSpan.FromSeconds(60);

    internal sealed class Entry(GrpcChannel channel)
    {
        public readonly GrpcChannel Channel = channel;
        public int Leases;            // Rent leases not yet disposed
        public long LastUsedTicks;    // Environment.TickCount64 of the last Get or Rent
        public long LastUse;          // order of the last use (ticks tie within a few ms)
    }

    readonly Lock _lock = new();
    readonly Dictionary<string, Entry> _channels = new(StringComparer.OrdinalIgnoreCase);
    readonly List<Entry> _retired = [];   // out of the cache, waiting for their last call
    readonly Timer _sweeper;
    long _uses;
    bool _disposed;

    public PeerChannels(PeerChannelOptions options)
    {
        Options = options;
        _sweeper = new Timer(_ => Sweep(), null, TimeSpan.FromSeconds(15), TimeSpan.FromSeconds(15));
    }

    public PeerChannelOptions Options { get; }

    /// <summary>Channels in the cache (retired ones still finishing calls are not counted).</summary>
    public int Count
    {
        get { lock (_lock) return _channels.Count; }
    }

    /// <summary>
    /// The cached channel to <paramref name="address"/> (<c>HOST:PORT</c> or a URL), created on first use. Every call
    /// on it must end within <see cref="GetGrace"/>; longer users take a <see cref="Rent"/> lease.
    /// </summary>
    public GrpcChannel Get(string address)
    {
        lock (_lock) return Touch(address).Channel;
    }

    /// <summary>The cached channel to <paramref name="address"/>, kept from disposal until the lease is disposed.</summary>
    public Lease Rent(string address)
    {
        lock (_lock)
        {
            var entry = Touch(address);
            entry.Leases++;
            return new Lease(this, entry);
        }
    }

    /// <summary>A use of one channel; dispose it when the call has ended.</summary>
    public sealed class Lease : IDisposable
    {
        readonly PeerChannels _owner;
        readonly Entry _entry;
        int _released;

        internal Lease(PeerChannels owner, Entry entry)
        {
            _owner = owner;
            _entry = entry;
        }

        public GrpcChannel Channel => _entry.Channel;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) != 0) return;
            lock (_owner._lock)
            {
                _entry.Leases--;
                _entry.LastUsedTicks = Environment.TickCount64;
            }
        }
    }

    Entry Touch(string address)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        long now = Environment.TickCount64;
        if (!_channels.TryGetValue(address, out var entry))
        {
            if (_channels.Count >= MaxChannels)
            {
                var oldest = _channels.MinBy(kv => kv.Value.LastUse);
                _channels.Remove(oldest.Key);
                _retired.Add(oldest.Value);
            }
            entry = new Entry(Create(address, Options));
            _channels[address] = entry;
        }
        entry.LastUsedTicks = now;
        entry.LastUse = ++_uses;
        return entry;
    }

    /// <summary>Drops idle channels and disposes retired ones that no call can still be using.</summary>
    internal void Sweep()
    {
        var free = new List<GrpcChannel>();
        lock (_lock)
        {
            if (_disposed) return;
            long now = Environment.TickCount64;
            foreach (var (address, entry) in _channels.Where(kv => now - kv.Value.LastUsedTicks >= IdleTimeout.TotalMilliseconds).ToList())
            {
                if (entry.Leases > 0) continue;
                _channels.Remove(address);
                _retired.Add(entry);
            }
            _retired.RemoveAll(entry =>
            {
                if (entry.Leases > 0 || now - entry.LastUsedTicks < GetGrace.TotalMilliseconds) return false;
                free.Add(entry.Channel);
                return true;
            });
        }
        foreach (var channel in free) channel.Dispose();
    }

    /// <summary>
    /// A new channel the caller owns to the dial string <paramref name="address"/> (see <see cref="PeerTarget"/>:
    /// TLS, pinned to a node id when one is given, unless it starts with <c>http://</c>): HTTP/2, large messages
    /// both ways, and fast first reconnects (the default backoff makes the first call after a peer starts wait
    /// about a second).
    /// </summary>
    public static GrpcChannel Create(string address, PeerChannelOptions options)
    {
        var target = PeerTarget.Parse(address);
        var handler = new SocketsHttpHandler
        {
            EnableMultipleHttp2Connections = options.MultipleHttp2Connections,
            ConnectTimeout = options.ConnectTimeout,
            KeepAlivePingDelay = TimeSpan.FromSeconds(30),
            KeepAlivePingTimeout = TimeSpan.FromSeconds(20),
        };
        if (options.PooledConnectionIdleTimeout is { } idle) handler.PooledConnectionIdleTimeout = idle;
        if (target.Tls)
            handler.SslOptions = new System.Net.Security.SslClientAuthenticationOptions
            {
                RemoteCertificateValidationCallback = PeerTls.Validator(target.Address, target.ExpectedId),
                ApplicationProtocols = [System.Net.Security.SslApplicationProtocol.Http2],
            };
        var settings = new GrpcChannelOptions
        {
            MaxReceiveMessageSize = options.MaxMessageBytes,
            MaxSendMessageSize = options.MaxMessageBytes,
            InitialReconnectBackoff = TimeSpan.FromMilliseconds(50),
            HttpHandler = handler,
        };
        if (options.MaxReconnectBackoff is { } max) settings.MaxReconnectBackoff = max;
        return GrpcChannel.ForAddress(target.Uri, settings);
    }

    /// <summary>Closes every channel; calls still running on them fail.</summary>
    public void Dispose()
    {
        List<Entry> all;
        lock (_lock)
        {
            if (_disposed) return;
            _disposed = true;
            all = [.. _channels.Values, .. _retired];
            _channels.Clear();
            _retired.Clear();
        }
        _sweeper.Dispose();
        foreach (var entry in all) entry.Channel.Dispose();
    }
}
