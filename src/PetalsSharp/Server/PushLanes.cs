using System.Collections.Concurrent;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using PetalsSharp.Dht;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;

namespace PetalsSharp.Server;

/// <summary>
/// One long-lived <c>PushStream</c> call per next server this server pushes to. A unary Push costs a new HTTP/2
/// stream (headers both ways, a deadline, a thread-pool hand-off) on every step: 1.1-1.2 ms from the end of a hop's
/// compute to the next server's handler on a 2-core loopback swarm, against 0.57-0.65 ms for a message on a warm lane.
/// A lane is opened in the background on the first push to an address (that push, and any until the server has
/// accepted the lane, go unary) and closed after <see cref="IdleTimeout"/> without pushes.
/// </summary>
internal sealed class PushLanes(ServerOptions options, PeerChannels peers, ILogger logger) : IDisposable
{
    readonly ServerOptions _options = options;
    readonly PeerChannels _peers = peers;
    readonly ILogger _logger = logger;

    /// <summary>A lane without pushes this long is closed, so its channel can leave the peer cache.</summary>
    public static readonly TimeSpan IdleTimeout = TimeSpan.FromSeconds(60);

    /// <summary>How long an address whose server lacks PushStream (an older version) gets unary pushes without asking again.</summary>
    static readonly TimeSpan UnsupportedFor = TimeSpan.FromMinutes(10);

    readonly ConcurrentDictionary<string, Lane> _lanes = new(StringComparer.OrdinalIgnoreCase);
    readonly ConcurrentDictionary<string, long> _unsupported = new(StringComparer.OrdinalIgnoreCase);
    Timer? _sweeper;
    volatile bool _disposed;

    /// <summary>
    /// Writes <paramref name="request"/> on the lane to <paramref name="address"/> and returns the write (it completes
    /// at once unless the stream is flow-controlled; it fails when the lane broke). Null when no lane is ready: the
    /// caller pushes with a unary call, and a lane is opened for the next pushes.
    /// </summary>
    public Task? TrySend(string address, PushRequest request)
    {
        if (_disposed) return null;
        if (_lanes.TryGetValue(address, out var lane))
            return lane.Ready ? lane.SendAsync(request) : null;
        if (_unsupported.TryGetValue(address, out var since) && Environment.TickCount64 - since < UnsupportedFor.TotalMilliseconds) return null;
        var fresh = new Lane(this, address);
        if (_lanes.TryAdd(address, fresh))
        {
            fresh.Start();
            StartSweeping();
        }
        return null;
    }

    void StartSweeping()
    {
        if (Volatile.Read(ref _sweeper) is not null) return;
        var timer = new Timer(_ => Sweep(), null, IdleTimeout / 2, IdleTimeout / 2);
        if (Interlocked.CompareExchange(ref _sweeper, timer, null) is not null) timer.Dispose();
    }

    void Sweep()
    {
        long now = Environment.TickCount64;
        foreach (var (_, lane) in _lanes)
            if (now - Volatile.Read(ref lane.LastUsed) > IdleTimeout.TotalMilliseconds) lane.Close();
    }

    public void Dispose()
    {
        _disposed = true;
        _sweeper?.Dispose();
        foreach (var (_, lane) in _lanes) lane.Close();
    }

    sealed class Lane(PushLanes owner, string address)
    {
        readonly CancellationTokenSource _stop = new();
        readonly SemaphoreSlim _writing = new(1, 1);   // a gRPC stream takes one write at a time
        AsyncDuplexStreamingCall<PushRequest, PushReply>? _call;
        volatile bool _ready;
        int _closed;
        public long LastUsed = Environment.TickCount64;

        public bool Ready => _ready;

        public void Start() => _ = RunAsync();

        /// <summary>Opens the call, waits for the server to accept it, then logs the failures it reports until it ends.</summary>
        async Task RunAsync()
        {
            var lease = owner._peers.Rent(address);
            try
            {
                var client = new BlockService.BlockServiceClient(SwarmAuth.Apply(lease.Channel, owner._options.SwarmKey));
                _call = client.PushStream(cancellationToken: _stop.Token);
                await _call.ResponseHeadersAsync;
                _ready = true;
                while (await _call.ResponseStream.MoveNext(_stop.Token))
                {
                    var failed = _call.ResponseStream.Current;
                    owner._logger.LogWarning("push to {Address} failed: {Message}", address, failed.Error);
                }
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.Unimplemented)
            {
                owner._unsupported[address] = Environment.TickCount64;
            }
            catch (Exception e) when (!_stop.IsCancellationRequested)
            {
                owner._logger.LogDebug("push stream to {Address} ended: {Message}", address, e.Message);
            }
            catch (Exception) { /* closed by us */ }
            finally
            {
                Close();
                lease.Dispose();
            }
        }

        public async Task SendAsync(PushRequest request)
        {
            Volatile.Write(ref LastUsed, Environment.TickCount64);
            await _writing.WaitAsync(_stop.Token).ConfigureAwait(false);
            try { await _call!.RequestStream.WriteAsync(request, _stop.Token).ConfigureAwait(false); }
            finally { _writing.Release(); }
        }

        /// <summary>Takes the lane out of use at once; the call ends when its reader sees the cancellation.</summary>
        public void Close()
        {
            if (Interlocked.Exchange(ref _closed, 1) != 0) return;
            _ready = false;
            owner._lanes.TryRemove(new KeyValuePair<string, Lane>(address, this));
            _stop.Cancel();
            _call?.Dispose();
        }
    }
}
