using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using PetalsSharp.Relay.V1;

namespace PetalsSharp.Relay;

/// <summary>
/// The relay's state: one TCP listener per registered server, and the client connections waiting for the server
/// to take them. Connection ids are random 64-bit numbers sent only to the registered server, so nobody else can
/// claim a connection. Everything a server holds here ends with its Register call.
/// </summary>
public sealed class RelayHub
{
    readonly RelayOptions _options;
    readonly ILogger _log;
    readonly ConcurrentDictionary<ulong, Pending> _pending = new();
    readonly ConcurrentDictionary<Registration, byte> _servers = new();
    long _connections, _bytes;

    /// <param name="options">Limits.</param>
    /// <param name="relayId">This relay's node id (told to servers).</param>
    /// <param name="bind">The IP the per-server ports listen on (the relay's own listening IP).</param>
    /// <param name="publicHost">The host clients dial for those ports (the relay's announced host), read at each registration.</param>
    /// <param name="logger">Where registrations are logged.</param>
    public RelayHub(RelayOptions options, string relayId, IPAddress bind, Func<string> publicHost, ILogger? logger = null)
    {
        options.Validate();
        _options = options;
        RelayId = relayId;
        Bind = bind;
        PublicHost = publicHost;
        _log = logger ?? Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;
    }

    public string RelayId { get; }
    public RelayOptions Options => _options;
    IPAddress Bind { get; }
    Func<string> PublicHost { get; }

    /// <summary>Servers registered now.</summary>
    public int Servers => _servers.Count;

    /// <summary>Client connections taken by their servers so far.</summary>
    public long Connections => Interlocked.Read(ref _connections);

    /// <summary>
    /// Wraps each client connection's stream before it is spliced: what a relay operator could do to the bytes.
    /// Tests use it to read and alter exactly what the relay carries.
    /// </summary>
    internal Func<Stream, Stream>? ClientStreamTap { get; set; }

    /// <summary>Bytes relayed so far, both directions.</summary>
    public long Bytes => Interlocked.Read(ref _bytes);

    sealed class Registration(string nodeId, TcpListener listener, long bytesPerSecond)
    {
        public string NodeId { get; } = nodeId;
        public TcpListener Listener { get; } = listener;
        public ByteBudget Budget { get; } = new(bytesPerSecond);
        // Bounded by Open (at most MaxConnectionsPerServer ids are ever waiting), so unbounded is safe here.
        public System.Threading.Channels.Channel<ulong> Incoming { get; } =
            System.Threading.Channels.Channel.CreateUnbounded<ulong>(new() { SingleReader = true });
        /// <summary>Ends the registration and every tunnel of it: a server cannot keep tunnels past its Register call.</summary>
        public CancellationTokenSource Ended { get; } = new();
        public int Open;   // connections accepted and not yet closed
        public string Address = "";
    }

    sealed record Pending(Registration Owner, Socket Socket);

    /// <summary>How long a Register or Tunnel call may take to send its first message.</summary>
    static readonly TimeSpan FirstMessageTimeout = TimeSpan.FromSeconds(10);

    static async Task FirstAsync<T>(IAsyncStreamReader<T> requests, CancellationToken ct)
    {
        using var first = CancellationTokenSource.CreateLinkedTokenSource(ct);
        first.CancelAfter(FirstMessageTimeout);
        try
        {
            if (!await requests.MoveNext(first.Token).ConfigureAwait(false))
                throw new RpcException(new Status(StatusCode.InvalidArgument, "the call ended before its first message"));
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new RpcException(new Status(StatusCode.DeadlineExceeded, $"no first message within {FirstMessageTimeout.TotalSeconds:0} s"));
        }
    }

    /// <summary>Runs one server's registration until its call ends (the server left or died) or <paramref name="ct"/> fires.</summary>
    internal async Task RegisterAsync(IAsyncStreamReader<RegisterRequest> requests, IServerStreamWriter<RegisterReply> replies, CancellationToken ct)
    {
        await FirstAsync(requests, ct).ConfigureAwait(false);
        var nodeId = requests.Current.NodeId;
        if (!Wire.PeerTls.IsId(nodeId)) throw new RpcException(new Status(StatusCode.InvalidArgument, "node_id must be 40 hex digits"));
        Registration registration;
        lock (_servers)
        {
            if (_servers.Count >= _options.MaxServers)
                throw new RpcException(new Status(StatusCode.ResourceExhausted,
                    $"this relay carries its maximum of {_options.MaxServers} servers; register with another relay"));
            registration = new Registration(nodeId.ToLowerInvariant(), new TcpListener(Bind, 0), _options.MaxBytesPerSecondPerServer);
            _servers[registration] = 0;
        }
        var listener = registration.Listener;
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct, registration.Ended.Token);
        Task accept = Task.CompletedTask, notify = Task.CompletedTask, alive = Task.CompletedTask;
        try
        {
            listener.Start();
            var port = ((IPEndPoint)listener.LocalEndpoint).Port;
            registration.Address = $"{PublicHost()}:{port}";
            await replies.WriteAsync(new RegisterReply
            {
                Registered = new Registered
                {
                    Address = registration.Address, RelayId = RelayId, MaxConnections = _options.MaxConnectionsPerServer,
                    MaxBytesPerSecond = _options.MaxBytesPerSecondPerServer,
                },
            }, ct).ConfigureAwait(false);
            _log.LogInformation("relaying for server {Server} at {Address} ({Servers}/{Max} servers)", nodeId, registration.Address, _servers.Count, _options.MaxServers);
            accept = AcceptLoopAsync(registration, stop.Token);
            notify = Task.Run(async () =>
            {
                await foreach (var id in registration.Incoming.Reader.ReadAllAsync(stop.Token).ConfigureAwait(false))
                    await replies.WriteAsync(new RegisterReply { Incoming = new Incoming { ConnectionId = id } }, stop.Token).ConfigureAwait(false);
            }, stop.Token);
            // The server only keeps the call open; anything it sends after the first message is ignored.
            alive = Task.Run(async () => { while (await requests.MoveNext(stop.Token).ConfigureAwait(false)) { } }, stop.Token);
            await Task.WhenAny(accept, notify, alive).ConfigureAwait(false);
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or SocketException or InvalidOperationException) { }
        finally
        {
            registration.Ended.Cancel();
            listener.Dispose();
            // The call's streams must not be touched once this method returns: wait for everything using them.
            try { await Task.WhenAll(accept, notify, alive).ConfigureAwait(false); }
            catch (Exception) { /* cancelled, or the server's side broke: the registration is over either way */ }
            _servers.TryRemove(registration, out _);
            foreach (var (id, pending) in _pending.Where(p => p.Value.Owner == registration).ToList())
                if (_pending.TryRemove(id, out _)) pending.Socket.Dispose();
            _log.LogInformation("server {Server} left relay address {Address}", nodeId, registration.Address);
        }
    }

    async Task AcceptLoopAsync(Registration registration, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            Socket socket;
            try { socket = await registration.Listener.AcceptSocketAsync(ct).ConfigureAwait(false); }
            catch (SocketException e)
            {
                // A client that reset while queued, or no file descriptors left: never a reason to drop the server.
                _log.LogDebug("accepting a connection to {Address} failed: {Message}", registration.Address, e.Message);
                await Task.Delay(TimeSpan.FromMilliseconds(e.SocketErrorCode == SocketError.TooManyOpenSockets ? 500 : 10), ct).ConfigureAwait(false);
                continue;
            }
            if (Interlocked.Increment(ref registration.Open) > _options.MaxConnectionsPerServer)
            {
                Interlocked.Decrement(ref registration.Open);
                _log.LogWarning("closed a connection to {Address}: the server already has {Max} relayed connections", registration.Address, _options.MaxConnectionsPerServer);
                socket.Dispose();
                continue;
            }
            try { socket.NoDelay = true; }
            catch (SocketException)
            {
                Interlocked.Decrement(ref registration.Open);
                socket.Dispose();
                continue;
            }
            ulong id = BitConverter.ToUInt64(RandomNumberGenerator.GetBytes(8));
            _pending[id] = new Pending(registration, socket);
            registration.Incoming.Writer.TryWrite(id);
            _ = ExpireAsync(id, ct);
        }
    }

    /// <summary>A connection the server never took is closed, so a silent server cannot pile up sockets here.</summary>
    async Task ExpireAsync(ulong id, CancellationToken ct)
    {
        try { await Task.Delay(_options.TunnelTimeout, ct).ConfigureAwait(false); }
        catch (OperationCanceledException) { }
        if (_pending.TryRemove(id, out var pending))
        {
            Interlocked.Decrement(ref pending.Owner.Open);
            pending.Socket.Dispose();
        }
    }

    /// <summary>Splices the client connection the first message names into this Tunnel call until either side ends.</summary>
    internal async Task TunnelAsync(IAsyncStreamReader<TunnelChunk> requests, IServerStreamWriter<TunnelChunk> replies, CancellationToken ct)
    {
        await FirstAsync(requests, ct).ConfigureAwait(false);
        var first = requests.Current;
        if (!_pending.TryRemove(first.ConnectionId, out var pending))
            throw new RpcException(new Status(StatusCode.NotFound, "no waiting connection has this id (it expired, or was never offered)"));
        var owner = pending.Owner;
        Interlocked.Increment(ref _connections);
        try
        {
            // The tunnel ends with its registration, even if the server keeps the Tunnel call open.
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(ct, owner.Ended.Token);
            Stream stream = new CountingStream(new NetworkStream(pending.Socket, ownsSocket: true), n => Interlocked.Add(ref _bytes, n));
            if (ClientStreamTap is { } tap) stream = tap(stream);
            await Splice.RunAsync(stream, requests, (chunk, token) => replies.WriteAsync(chunk, token), owner.Budget, first.Data, linked.Token).ConfigureAwait(false);
        }
        finally { Interlocked.Decrement(ref owner.Open); }
    }
}
