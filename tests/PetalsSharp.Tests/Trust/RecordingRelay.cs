using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;

namespace PetalsSharp.Tests.Trust;

/// <summary>
/// An on-path observer: a loopback TCP relay that forwards every byte to its target and keeps what it saw, per
/// connection and direction, so a test can read what an eavesdropper reads. <see cref="TamperAfter"/> makes it an
/// active attacker that flips one byte of the server's answer.
/// </summary>
public sealed class RecordingRelay : IAsyncDisposable
{
    /// <summary>Bytes kept per connection and direction; enough for handshakes and a few activations.</summary>
    const int KeepBytes = 1 << 20;

    readonly Socket _listener;
    readonly IPEndPoint _target;
    readonly CancellationTokenSource _stop = new();
    readonly ConcurrentBag<Task> _pumps = [];
    readonly ConcurrentBag<Socket> _sockets = [];
    readonly Task _accepts;

    /// <summary>One accepted connection: what the dialer sent (Up) and what the target answered (Down).</summary>
    public sealed class Link
    {
        public readonly MemoryStream Up = new(), Down = new();
        public long DownBytes;
    }

    public RecordingRelay(string target)
    {
        int colon = target.LastIndexOf(':');
        _target = new IPEndPoint(IPAddress.Parse(target[..colon]), int.Parse(target[(colon + 1)..]));
        _listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _listener.Listen(64);
        Address = $"127.0.0.1:{((IPEndPoint)_listener.LocalEndPoint!).Port}";
        _accepts = AcceptAsync();
    }

    public string Address { get; }

    public ConcurrentQueue<Link> Links { get; } = new();

    /// <summary>When set, the byte at this offset of each connection's answer stream is flipped.</summary>
    public long? TamperAfter { get; set; }

    async Task AcceptAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try { client = await _listener.AcceptAsync(_stop.Token); }
            catch (Exception) { return; }
            var server = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            try { await server.ConnectAsync(_target, _stop.Token); }
            catch (Exception)
            {
                client.Dispose();
                server.Dispose();
                continue;
            }
            _sockets.Add(client);
            _sockets.Add(server);
            var link = new Link();
            Links.Enqueue(link);
            _pumps.Add(PumpAsync(client, server, link.Up, null));
            _pumps.Add(PumpAsync(server, client, link.Down, link));
        }
    }

    async Task PumpAsync(Socket from, Socket to, MemoryStream seen, Link? down)
    {
        var buffer = new byte[64 * 1024];
        try
        {
            while (true)
            {
                int n = await from.ReceiveAsync(buffer, _stop.Token);
                if (n == 0) break;
                if (down is not null && TamperAfter is { } at && down.DownBytes <= at && at < down.DownBytes + n)
                    buffer[at - down.DownBytes] ^= 0x5a;
                if (down is not null) down.DownBytes += n;
                lock (seen) if (seen.Length < KeepBytes) seen.Write(buffer, 0, (int)Math.Min(n, KeepBytes - seen.Length));
                await to.SendAsync(buffer.AsMemory(0, n), _stop.Token);
            }
        }
        catch (Exception) { /* either side went away */ }
        finally
        {
            try { to.Shutdown(SocketShutdown.Send); } catch (Exception) { }
        }
    }

    /// <summary>What one direction of a link carried so far.</summary>
    public static byte[] Bytes(MemoryStream seen)
    {
        lock (seen) return seen.ToArray();
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        _listener.Dispose();
        try { await _accepts; } catch (Exception) { }
        foreach (var socket in _sockets) socket.Dispose();
        try { await Task.WhenAll(_pumps).WaitAsync(TimeSpan.FromSeconds(5)); } catch (Exception) { }
        _stop.Dispose();
    }
}
