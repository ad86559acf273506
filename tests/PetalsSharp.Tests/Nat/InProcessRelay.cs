using System.Collections.Concurrent;
using System.Net;
using PetalsSharp.Dht;
using PetalsSharp.Relay;

namespace PetalsSharp.Tests.Nat;

/// <summary>
/// A swarm's first DHT node that is also a relay, inside the test process: the test reads (and may alter) exactly
/// the bytes the relay carries for each relayed connection, through <see cref="RelayHub.ClientStreamTap"/>.
/// </summary>
public sealed class InProcessRelay : IAsyncDisposable
{
    readonly CancellationTokenSource _stop = new();
    Task _announcing = Task.CompletedTask;

    InProcessRelay(DhtNode node, RelayHub hub)
    {
        Node = node;
        Hub = hub;
    }

    public DhtNode Node { get; }
    public RelayHub Hub { get; }
    public string PeerAddress => Node.PeerAddress;

    /// <summary>What crossed the relay, per relayed connection: client to server (Up) and server to client (Down).</summary>
    public ConcurrentQueue<TapStream> Links { get; } = new();

    /// <summary>When set, the relay flips the byte at this offset of each connection's server-to-client stream.</summary>
    public long? TamperAfter { get; set; }

    /// <summary>Starts the node and its relay (with <paramref name="options"/>' limits), announced in the DHT.</summary>
    public static async Task<InProcessRelay> StartAsync(RelayOptions? options = null)
    {
        var identity = NodeIdentity.CreateEphemeral();
        DhtNode? node = null;
        var hub = new RelayHub(options ?? new RelayOptions(), identity.Id.ToString(), IPAddress.Loopback, () => RelayHost.HostOf(node?.Address ?? "127.0.0.1:0"));
        node = await DhtNode.StartAsync(RelayHost.Attach(new DhtNodeOptions { Host = "127.0.0.1", Port = 0, Identity = identity }, hub));
        var relay = new InProcessRelay(node, hub);
        hub.ClientStreamTap = stream =>
        {
            var tap = new TapStream(stream, relay.TamperAfter);
            relay.Links.Enqueue(tap);
            return tap;
        };
        relay._announcing = await RelayDirectory.AnnounceAsync(node, hub, TimeSpan.FromSeconds(30),
            Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance, relay._stop.Token);
        return relay;
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        await _announcing;
        await Node.DisposeAsync();
        Node.Identity.Dispose();
        _stop.Dispose();
    }
}

/// <summary>A relayed connection's stream as the relay holds it: keeps the first MiB each way, and may flip one byte.</summary>
public sealed class TapStream(Stream inner, long? tamperAt) : Stream
{
    const int Keep = 1 << 20;
    readonly MemoryStream _up = new(), _down = new();
    long _downOffset;

    public byte[] Up { get { lock (_up) return _up.ToArray(); } }
    public byte[] Down { get { lock (_down) return _down.ToArray(); } }

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() => inner.Flush();
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken ct = default)
    {
        int n = await inner.ReadAsync(buffer, ct);
        lock (_up) if (_up.Length < Keep) _up.Write(buffer.Span[..n]);
        return n;
    }

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken ct = default)
    {
        var bytes = buffer.ToArray();
        if (tamperAt is { } at && at >= _downOffset && at < _downOffset + bytes.Length) bytes[at - _downOffset] ^= 0x5a;
        _downOffset += bytes.Length;
        lock (_down) if (_down.Length < Keep) _down.Write(buffer.Span);
        await inner.WriteAsync(bytes, ct);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) inner.Dispose();
        base.Dispose(disposing);
    }
}
