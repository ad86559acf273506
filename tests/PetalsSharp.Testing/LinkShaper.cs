using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;

namespace PetalsSharp.Testing;

/// <summary>
/// A loopback TCP proxy that makes one address look like it sits across a WAN link, for tests and benchmarks
/// (this machine's kernel has no netem). Clients dial <see cref="Address"/>; every byte reaches the target, and
/// every reply byte comes back, <see cref="OneWayDelay"/> later, optionally squeezed through a
/// <see cref="BytesPerSecond"/> bottleneck shared by all connections in that direction.
/// </summary>
/// <remarks>
/// Each direction is a delay line: a reader stamps each chunk with its release time as it arrives and a writer
/// sends it when due, so many small frames in flight (HTTP/2) each pay the delay once instead of queueing behind
/// one another's sleeps. The proxy buffers up to <see cref="MaxQueuedChunks"/> chunks per direction, so unlike a
/// real long link it does not cap a single connection at window/RTT.
/// </remarks>
public sealed class LinkShaper : IAsyncDisposable
{
    /// <summary>Chunks held per connection and direction before the proxy stops reading (backpressure).</summary>
    public const int MaxQueuedChunks = 256;
    const int ChunkBytes = 64 * 1024;

    readonly Socket _listener;
    readonly EndPoint _target;
    readonly CancellationTokenSource _stop = new();
    readonly ConcurrentDictionary<Connection, Task> _connections = new();
    readonly Link _up = new(), _down = new();
    readonly Task _acceptLoop;
    long _delayTicks, _bytesPerSecond, _accepted;

    LinkShaper(EndPoint target, TimeSpan oneWayDelay, long? bytesPerSecond)
    {
        _target = target;
        OneWayDelay = oneWayDelay;
        BytesPerSecond = bytesPerSecond;
        _listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _listener.Listen(512);
        Address = $"127.0.0.1:{((IPEndPoint)_listener.LocalEndPoint!).Port}";
        _acceptLoop = AcceptLoopAsync();
    }

    /// <summary>Starts a shaper on 127.0.0.1 (ephemeral port).</summary>
    /// <param name="target">"host:port" the shaper forwards to.</param>
    /// <param name="oneWayDelay">Added to each direction, so a round trip gains twice this.</param>
    /// <param name="bytesPerSecond">Bandwidth of each direction (shared by all connections), or null for unlimited.</param>
    public static Task<LinkShaper> StartAsync(string target, TimeSpan oneWayDelay, long? bytesPerSecond = null)
    {
        int colon = target.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(target.AsSpan(colon + 1), out var port) || port is <= 0 or > 65535)
            throw new ArgumentException($"expected host:port, got '{target}'", nameof(target));
        var host = target[..colon].Trim('[', ']');
        EndPoint endpoint = IPAddress.TryParse(host, out var ip) ? new IPEndPoint(ip, port) : new DnsEndPoint(host, port);
        return Task.FromResult(new LinkShaper(endpoint, oneWayDelay, bytesPerSecond));
    }

    /// <summary>"127.0.0.1:PORT" to dial instead of the target.</summary>
    public string Address { get; }

    /// <summary>Delay of each direction; may be changed while connections are open (applies to data read after).</summary>
    public TimeSpan OneWayDelay
    {
        get => TimeSpan.FromSeconds(Interlocked.Read(ref _delayTicks) / (double)Stopwatch.Frequency);
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, TimeSpan.Zero);
            Interlocked.Exchange(ref _delayTicks, (long)(value.TotalSeconds * Stopwatch.Frequency));
        }
    }

    /// <summary>Bandwidth of each direction in bytes per second, null for unlimited; may be changed at any time.</summary>
    public long? BytesPerSecond
    {
        get => Interlocked.Read(ref _bytesPerSecond) is > 0 and var r ? r : null;
        set
        {
            if (value <= 0) throw new ArgumentOutOfRangeException(nameof(value), value, "bandwidth must be positive");
            Interlocked.Exchange(ref _bytesPerSecond, value ?? 0);
        }
    }

    /// <summary>Bytes delivered to the target so far.</summary>
    public long BytesToTarget => Interlocked.Read(ref _up.Delivered);

    /// <summary>Bytes delivered back to clients so far.</summary>
    public long BytesFromTarget => Interlocked.Read(ref _down.Delivered);

    /// <summary>Connections accepted so far.</summary>
    public long ConnectionsAccepted => Interlocked.Read(ref _accepted);

    /// <summary>Connections open now.</summary>
    public int ActiveConnections => _connections.Count;

    /// <summary>Closes every open connection at once (data in flight is lost), as a crashed link would; keeps listening.</summary>
    public void ResetConnections()
    {
        foreach (var c in _connections.Keys) c.Close(abort: true);
    }

    async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try { client = await _listener.AcceptAsync(_stop.Token).ConfigureAwait(false); }
            catch (Exception) when (_stop.IsCancellationRequested) { return; }
            catch (SocketException) { continue; }
            Interlocked.Increment(ref _accepted);
            client.NoDelay = true;   // Nagle would hold back small frames and add its own delay on top of ours
            var connection = new Connection(client, new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true }, _stop.Token);
            var tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _connections[connection] = tcs.Task;
            _ = Task.Run(async () =>
            {
                try { await RunAsync(connection).ConfigureAwait(false); }
                finally
                {
                    connection.Close(abort: false);
                    _connections.TryRemove(connection, out _);
                    tcs.TrySetResult();
                }
            });
        }
    }

    async Task RunAsync(Connection c)
    {
        try { await c.Server.ConnectAsync(_target, c.Token).ConfigureAwait(false); }
        catch (Exception) { return; }   // the target is down: the client sees its connection close, as it would
        var up = PumpAsync(c, c.Client, c.Server, _up);
        var down = PumpAsync(c, c.Server, c.Client, _down);
        await Task.WhenAll(up, down).ConfigureAwait(false);
    }

    /// <summary>One direction of one connection: a reader that stamps chunks and a writer that releases them when due.</summary>
    async Task PumpAsync(Connection c, Socket from, Socket to, Link link)
    {
        var queue = Channel.CreateBounded<Chunk>(new BoundedChannelOptions(MaxQueuedChunks) { SingleReader = true, SingleWriter = true });
        var writer = WriteAsync(c, to, queue.Reader, link);
        try
        {
            while (true)
            {
                var buffer = ArrayPool<byte>.Shared.Rent(ChunkBytes);
                int n = await from.ReceiveAsync(buffer.AsMemory(0, ChunkBytes), SocketFlags.None, c.Token).ConfigureAwait(false);
                if (n == 0) ArrayPool<byte>.Shared.Return(buffer);
                await queue.Writer.WriteAsync(new Chunk(n == 0 ? null : buffer, n, ReleaseTime(link, n)), c.Token).ConfigureAwait(false);
                if (n == 0) break;   // end of stream travels down the line too, then becomes a half-close
            }
        }
        catch (Exception)
        {
            c.Close(abort: true);   // a reset on one side resets the other, like a broken path
        }
        finally
        {
            queue.Writer.TryComplete();
        }
        await writer.ConfigureAwait(false);
    }

    async Task WriteAsync(Connection c, Socket to, ChannelReader<Chunk> queue, Link link)
    {
        try
        {
            await foreach (var chunk in queue.ReadAllAsync(c.Token).ConfigureAwait(false))
            {
                await WaitUntilAsync(chunk.Due, c.Token).ConfigureAwait(false);
                if (chunk.Buffer is null)
                {
                    to.Shutdown(SocketShutdown.Send);
                    return;
                }
                try
                {
                    for (int sent = 0; sent < chunk.Length;)
                        sent += await to.SendAsync(chunk.Buffer.AsMemory(sent, chunk.Length - sent), SocketFlags.None, c.Token).ConfigureAwait(false);
                }
                finally { ArrayPool<byte>.Shared.Return(chunk.Buffer); }
                Interlocked.Add(ref link.Delivered, chunk.Length);
            }
        }
        catch (Exception)
        {
            c.Close(abort: true);
            while (queue.TryRead(out var rest))
                if (rest.Buffer is not null) ArrayPool<byte>.Shared.Return(rest.Buffer);
        }
    }

    /// <summary>
    /// Waits until the Stopwatch timestamp <paramref name="due"/>, never less: timers tick in whole milliseconds and
    /// may fire a fraction early, and a link that is sometimes faster than configured breaks "≥ 2 × delay" checks.
    /// </summary>
    static async Task WaitUntilAsync(long due, CancellationToken ct)
    {
        long wait;
        while ((wait = due - Stopwatch.GetTimestamp()) > 0)
        {
            double ms = wait * 1000.0 / Stopwatch.Frequency;
            if (ms >= 1) await Task.Delay(TimeSpan.FromMilliseconds(Math.Ceiling(ms)), ct).ConfigureAwait(false);
            else await Task.Yield();
        }
    }

    /// <summary>
    /// When a chunk read now comes out of the far end: after the link has finished sending everything before it
    /// and this chunk (bandwidth), plus the propagation delay.
    /// </summary>
    long ReleaseTime(Link link, int bytes)
    {
        long now = Stopwatch.GetTimestamp(), delay = Interlocked.Read(ref _delayTicks), rate = Interlocked.Read(ref _bytesPerSecond);
        if (rate <= 0) return now + delay;
        lock (link)
        {
            link.FreeAt = Math.Max(link.FreeAt, now) + (long)(bytes * (double)Stopwatch.Frequency / rate);
            return link.FreeAt + delay;
        }
    }

    /// <summary>Stops listening, closes every connection and waits for their pumps to finish.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_stop.IsCancellationRequested) return;
        _stop.Cancel();
        _listener.Dispose();
        await _acceptLoop.ConfigureAwait(false);   // first, so no connection is added after the sweep below
        foreach (var c in _connections.Keys) c.Close(abort: true);
        await Task.WhenAll(_connections.Values).ConfigureAwait(false);
        _stop.Dispose();
    }

    readonly record struct Chunk(byte[]? Buffer, int Length, long Due);

    /// <summary>One direction's shared bottleneck and counter.</summary>
    sealed class Link
    {
        public long FreeAt;
        public long Delivered;
    }

    sealed class Connection(Socket client, Socket server, CancellationToken stop)
    {
        readonly CancellationTokenSource _cts = CancellationTokenSource.CreateLinkedTokenSource(stop);
        int _closed;

        public Socket Client { get; } = client;
        public Socket Server { get; } = server;
        public CancellationToken Token => _cts.Token;

        /// <summary>Idempotent; abort sends RST (linger 0) so the peer notices at once instead of seeing a clean end.</summary>
        public void Close(bool abort)
        {
            if (Interlocked.Exchange(ref _closed, 1) == 1) return;
            _cts.Cancel();
            foreach (var s in new[] { Client, Server })
            {
                try { if (abort && s.Connected) s.LingerState = new LingerOption(true, 0); } catch (Exception) { }
                s.Dispose();
            }
        }
    }
}
