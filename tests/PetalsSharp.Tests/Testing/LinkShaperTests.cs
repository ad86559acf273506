using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Grpc.Net.Client;
using PetalsSharp.Server;
using PetalsSharp.Swarm;
using PetalsSharp.Testing;
using PetalsSharp.Wire.V1;
using Xunit;
using Xunit.Abstractions;

namespace PetalsSharp.Tests.Testing;

/// <summary>The WAN-link proxy: delay, bandwidth, gRPC over it, and teardown. Bounds are loose: the CI box has 2 busy cores.</summary>
public sealed class LinkShaperTests(ITestOutputHelper output)
{
    /// <summary>A TCP server on 127.0.0.1 that runs <paramref name="serve"/> on each connection.</summary>
    sealed class TinyServer : IAsyncDisposable
    {
        readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        readonly CancellationTokenSource _stop = new();
        readonly Task _loop;

        public TinyServer(Func<NetworkStream, CancellationToken, Task> serve)
        {
            _listener.Start();
            _loop = Task.Run(async () =>
            {
                while (!_stop.IsCancellationRequested)
                {
                    TcpClient client;
                    try { client = await _listener.AcceptTcpClientAsync(_stop.Token); }
                    catch (Exception) { return; }
                    client.NoDelay = true;
                    _ = Task.Run(async () =>
                    {
                        using (client)
                            try { await serve(client.GetStream(), _stop.Token); } catch (Exception) { }
                    });
                }
            });
        }

        public string Address => $"127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}";

        public async ValueTask DisposeAsync()
        {
            _stop.Cancel();
            _listener.Stop();
            await _loop;
        }
    }

    static TinyServer Echo() => new(async (s, ct) =>
    {
        var buffer = new byte[65536];
        int n;
        while ((n = await s.ReadAsync(buffer, ct)) > 0) await s.WriteAsync(buffer.AsMemory(0, n), ct);
    });

    static async Task<NetworkStream> DialAsync(string address)
    {
        var parts = address.Split(':');
        var client = new TcpClient { NoDelay = true };
        await client.ConnectAsync(parts[0], int.Parse(parts[1]));
        return client.GetStream();
    }

    static async Task ReadExactlyAsync(Stream s, int bytes)
    {
        var buffer = new byte[Math.Min(bytes, 65536)];
        for (int got = 0; got < bytes;)
        {
            int n = await s.ReadAsync(buffer.AsMemory(0, Math.Min(buffer.Length, bytes - got)));
            if (n == 0) throw new EndOfStreamException($"closed after {got} of {bytes} bytes");
            got += n;
        }
    }

    static double Median(List<double> xs) => xs.Order().ElementAt(xs.Count / 2);

    [Fact]
    public async Task ARoundTripTakesTwiceTheDelayAndFramesInFlightOverlap()
    {
        await using var echo = Echo();
        var delay = TimeSpan.FromMilliseconds(50);
        await using var shaper = await LinkShaper.StartAsync(echo.Address, delay);
        using var stream = await DialAsync(shaper.Address);

        var times = new List<double>();
        for (int i = 0; i < 7; i++)
        {
            var sw = Stopwatch.StartNew();
            await stream.WriteAsync(new byte[16]);
            await ReadExactlyAsync(stream, 16);
            times.Add(sw.Elapsed.TotalMilliseconds);
        }
        output.WriteLine($"round trips (ms): {string.Join(" ", times.Select(t => t.ToString("F1")))}");
        Assert.True(times.Min() >= 2 * delay.TotalMilliseconds - 1, $"min {times.Min():F1} ms");
        Assert.InRange(Median(times), 2 * delay.TotalMilliseconds, 2 * delay.TotalMilliseconds + 60);

        // 20 small writes 5 ms apart: through a delay line the last echo comes back 2·delay after the last write;
        // a sleep per chunk would make the echoes queue up to about 20 · 2·delay. Best of 3, as this box stalls
        // the thread pool for up to a second now and then (seen without the shaper too).
        var tails = new List<double>();
        for (int attempt = 0; attempt < 3; attempt++)
        {
            var burst = Stopwatch.StartNew();
            var reader = ReadExactlyAsync(stream, 20 * 8);
            for (int i = 0; i < 20; i++)
            {
                await stream.WriteAsync(new byte[8]);
                if (i < 19) await Task.Delay(5);
            }
            var lastWrite = burst.Elapsed.TotalMilliseconds;
            await reader;
            tails.Add(burst.Elapsed.TotalMilliseconds - lastWrite);
        }
        output.WriteLine($"20 pipelined writes, last echo after the last write (ms): {string.Join(" ", tails.Select(t => t.ToString("F1")))}");
        Assert.True(tails.Min() >= 2 * delay.TotalMilliseconds - 1, $"min {tails.Min():F1} ms");
        Assert.InRange(tails.Min(), 2 * delay.TotalMilliseconds, 2 * delay.TotalMilliseconds + 60);

        // The shaper counts a chunk after forwarding it, so the reader may see the last bytes a moment before the
        // counters do (one CI run read 584 of 592): wait for them instead of sampling once.
        const long expected = 7 * 16 + 3 * 20 * 8;
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while ((shaper.BytesToTarget != expected || shaper.BytesFromTarget != expected) && DateTime.UtcNow < deadline) await Task.Delay(20);
        Assert.Equal(expected, shaper.BytesToTarget);
        Assert.Equal(expected, shaper.BytesFromTarget);
        Assert.Equal(1, shaper.ConnectionsAccepted);
    }

    [Fact]
    public async Task ABandwidthLimitPacesBulkTransfers()
    {
        const int total = 1 << 20;
        // Counts what arrives and answers one byte when all of it did, so only the upstream direction is timed.
        await using var sink = new TinyServer(async (s, ct) =>
        {
            await ReadExactlyAsync(s, total);
            await s.WriteAsync(new byte[1], ct);
        });
        const long rate = 2 << 20;   // 2 MiB/s: 1 MiB should take 0.5 s
        await using var shaper = await LinkShaper.StartAsync(sink.Address, TimeSpan.FromMilliseconds(5), rate);
        using var stream = await DialAsync(shaper.Address);

        var sw = Stopwatch.StartNew();
        var payload = new byte[16384];
        for (int sent = 0; sent < total; sent += payload.Length) await stream.WriteAsync(payload);
        await ReadExactlyAsync(stream, 1);
        output.WriteLine($"1 MiB at 2 MiB/s: {sw.Elapsed.TotalMilliseconds:F0} ms");
        Assert.InRange(sw.Elapsed.TotalSeconds, 0.48, 0.5 + 0.25);
        Assert.Equal(total, shaper.BytesToTarget);
    }

    [Fact]
    public async Task GrpcWorksThroughTheShaperAndSeesItsDelay()
    {
        await using var server = BlockServer.Load(new ServerOptions
        {
            ModelDir = TestData.Path("llama-gqa"), StartBlock = 0, EndBlock = 3, Host = "127.0.0.1", Port = 0,
        });
        await server.StartAsync();
        var delay = TimeSpan.FromMilliseconds(40);
        await using var shaper = await LinkShaper.StartAsync(server.Address, delay);

        async Task<List<double>> TimeInfoCallsAsync(string address)
        {
            using var channel = TestChannels.Create(address);
            var client = new BlockService.BlockServiceClient(channel);
            var first = await client.InfoAsync(new InfoRequest());   // connection setup is not what we measure
            Assert.Equal(3, first.EndBlock);
            var times = new List<double>();
            for (int i = 0; i < 7; i++)
            {
                var sw = Stopwatch.StartNew();
                var reply = await client.InfoAsync(new InfoRequest());
                times.Add(sw.Elapsed.TotalMilliseconds);
                Assert.Equal(0, reply.StartBlock);
            }
            // Calls multiplexed on one HTTP/2 connection each pay one round trip, not one after another (best of 3).
            var bursts = new List<double>();
            for (int attempt = 0; attempt < 3; attempt++)
            {
                var burst = Stopwatch.StartNew();
                await Task.WhenAll(Enumerable.Range(0, 10).Select(_ => client.InfoAsync(new InfoRequest()).ResponseAsync));
                bursts.Add(burst.Elapsed.TotalMilliseconds);
            }
            times.Add(bursts.Min());
            return times;
        }

        var direct = await TimeInfoCallsAsync(server.Address);
        var shaped = await TimeInfoCallsAsync(shaper.Address);
        output.WriteLine($"direct (ms): {string.Join(" ", direct.Select(t => t.ToString("F1")))}");
        output.WriteLine($"shaped (ms): {string.Join(" ", shaped.Select(t => t.ToString("F1")))}");
        var rtt = 2 * delay.TotalMilliseconds;
        Assert.InRange(Median(shaped[..^1]), rtt, rtt + Median(direct[..^1]) + 60);
        Assert.InRange(shaped[^1], rtt, rtt + 100);                   // 10 concurrent calls
        Assert.True(shaper.BytesToTarget > 0 && shaper.BytesFromTarget > 0);
    }

    [Fact]
    public async Task ResetAndDisposeCloseEveryConnection()
    {
        await using var echo = Echo();
        var shaper = await LinkShaper.StartAsync(echo.Address, TimeSpan.FromMilliseconds(1));
        using var a = await DialAsync(shaper.Address);
        using var b = await DialAsync(shaper.Address);
        await a.WriteAsync(new byte[4]);
        await ReadExactlyAsync(a, 4);
        await b.WriteAsync(new byte[4]);
        await ReadExactlyAsync(b, 4);
        Assert.Equal(2, shaper.ActiveConnections);

        shaper.ResetConnections();
        await Assert.ThrowsAnyAsync<Exception>(() => ReadExactlyAsync(a, 1).WaitAsync(TimeSpan.FromSeconds(5)));

        // The shaper keeps listening after a reset; disposing it ends what is still open.
        using var c = await DialAsync(shaper.Address);
        await c.WriteAsync(new byte[4]);
        await ReadExactlyAsync(c, 4);
        await shaper.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(0, shaper.ActiveConnections);
        await Assert.ThrowsAnyAsync<Exception>(() => ReadExactlyAsync(c, 1).WaitAsync(TimeSpan.FromSeconds(5)));
        await Assert.ThrowsAnyAsync<SocketException>(() => DialAsync(shaper.Address));
    }
}
