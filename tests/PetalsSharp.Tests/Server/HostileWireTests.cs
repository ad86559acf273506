using System.Globalization;
using System.Net;
using Google.Protobuf;
using Grpc.Core;
using PetalsSharp.Server;
using PetalsSharp.Wire.V1;
using Xunit;
using WireTensor = PetalsSharp.Wire.V1.Tensor;

namespace PetalsSharp.Tests.Server;

/// <summary>
/// Attacks on a real <c>petals server</c> process through its gRPC port (issue 23): a Forward or Backward that
/// declares a huge tensor, gRPC frames with absurd length prefixes, and clients that walk away mid-call. Each is
/// answered with a status that says what was wrong, and none costs the server memory, errors in its log or
/// INTERNAL counts.
/// </summary>
[Trait("Category", "Processes")]
public sealed class HostileWireTests(Xunit.Abstractions.ITestOutputHelper output)
{
    const int Hidden = 64;   // llama-gqa's hidden size, so the server's limit math is the real one

    static Task<ServerProcess> StartAsync(params string[] extra) => ServerProcess.StartAsync(TestData.Path("llama-gqa"), 0, 3, extra);

    /// <summary>VmRSS of a process in bytes, from /proc.</summary>
    static long Rss(int pid)
    {
        foreach (var line in File.ReadLines($"/proc/{pid}/status"))
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
        throw new InvalidOperationException("no VmRSS");
    }

    /// <summary>
    /// The first bytes of a serialized float32 Tensor [1, tokens, 64] (shape, dtype, then the data field's tag and
    /// length), so that with tokens × 64 × 4 bytes after them it is exactly what an honest client would send.
    /// </summary>
    static byte[] TensorPrefix(long tokens, out long totalBytes)
    {
        var head = new WireTensor { Dtype = DType.Float32 };
        head.Shape.AddRange([1, tokens, Hidden]);
        long dataBytes = tokens * Hidden * 4;
        using var stream = new MemoryStream();
        head.WriteTo(stream);
        var coded = new CodedOutputStream(stream, leaveOpen: true);
        coded.WriteTag(WireTensor.DataFieldNumber, WireFormat.WireType.LengthDelimited);
        coded.WriteLength((int)dataBytes);
        coded.Flush();
        totalBytes = stream.Length + dataBytes;
        return stream.ToArray();
    }

    /// <summary>Streams a declared-huge tensor as 1 MiB chunks until the server ends the call; returns its status.</summary>
    static async Task<RpcException> SendHugeAsync(ServerClient client, bool backward, long tokens)
    {
        using var call = backward ? client.Raw.Backward(deadline: DateTime.UtcNow.AddMinutes(5)) : client.Raw.Forward(deadline: DateTime.UtcNow.AddMinutes(5));
        var prefix = TensorPrefix(tokens, out long total);
        IEnumerable<CallMessage> Messages()
        {
            const int chunk = 1 << 20;
            var filler = new byte[chunk];
            yield return new CallMessage { Header = ServerClient.Header(0, 3) };
            long sent = 0;
            for (int i = 0; sent < total; i++)
            {
                int length = (int)Math.Min(chunk, total - sent);
                var part = new byte[length];
                if (i == 0) prefix.CopyTo(part, 0);
                else filler.AsSpan(0, length).CopyTo(part);
                var message = new TensorChunk { Name = i == 0 ? "hidden" : "", TotalBytes = i == 0 ? total : 0, Part = UnsafeByteOperations.UnsafeWrap(part) };
                message.Last = sent + length == total;
                yield return new CallMessage { Chunk = message };
                sent += length;
            }
        }
        // The server refuses after the first chunk and ends the call; the upload stops there (UploadWhileOpen).
        var read = call.ResponseStream.MoveNext(CancellationToken.None);
        await PetalsSharp.Wire.UploadWhileOpen.WriteAllAsync(call.RequestStream, Messages(), read);
        return await Assert.ThrowsAsync<RpcException>(async () => await read);
    }

    [Theory]
    [InlineData(250, false)]
    [InlineData(1000, false)]
    [InlineData(250, true)]
    public async Task A_huge_declared_tensor_is_refused_before_it_is_buffered(int mebibytes, bool backward)
    {
        using var server = await StartAsync();
        using var client = new ServerClient(server.Address);
        // Warm up with one honest call so the baseline includes what serving itself costs.
        using (var x = TorchSharp.torch.randn(1, 8, Hidden)) (await client.ForwardAsync(x, ServerClient.Header(0, 3))).Dispose();
        long baseline = Rss(server.Id), peak = baseline;
        using var sampling = new CancellationTokenSource();
        var sampler = Task.Run(async () =>
        {
            while (!sampling.IsCancellationRequested)
            {
                peak = Math.Max(peak, Rss(server.Id));
                await Task.Delay(20);
            }
        });

        long tokens = (long)mebibytes * 1048576 / (Hidden * 4);
        RpcException e;
        try
        {
            e = await SendHugeAsync(client, backward, tokens);
            peak = Math.Max(peak, Rss(server.Id));
        }
        finally
        {
            await sampling.CancelAsync();
            await sampler;
        }

        output.WriteLine($"{mebibytes} MiB {(backward ? "backward" : "forward")}: RSS {baseline >> 20} MB → peak {peak >> 20} MB; {e.StatusCode}: {e.Status.Detail}");
        Assert.Contains(e.StatusCode, new[] { StatusCode.ResourceExhausted, StatusCode.InvalidArgument });
        Assert.Contains("hidden", e.Status.Detail);
        Assert.True(peak - baseline < 100L << 20,
            $"server RSS rose from {baseline >> 20} MB to {peak >> 20} MB for a {mebibytes} MiB tensor; {e.StatusCode}: {e.Status.Detail}");
        // Still serving.
        using (var x = TorchSharp.torch.randn(1, 8, Hidden)) (await client.ForwardAsync(x, ServerClient.Header(0, 3))).Dispose();
    }

    /// <summary>
    /// Our own client, uploading more than a server accepts: the server refuses after the header and ends the call,
    /// leaving most of a 16 MiB upload unsent and HTTP/2 with no window to give. The client must stop uploading and
    /// report the server's status; a write that waited for window credit once hung a CI run for good.
    /// </summary>
    [Fact]
    public async Task The_client_reports_a_refused_upload_instead_of_waiting_to_send_the_rest()
    {
        using var server = await StartAsync("--max-request-tokens", "16");
        var config = PetalsSharp.Models.ModelConfigLoader.Load(TestData.Path("llama-gqa"));
        var options = new PetalsSharp.Client.RemoteOptions();
        using var connection = await PetalsSharp.Client.ServerConnection.ConnectAsync(server.Address, config, options);
        var hop = new PetalsSharp.Swarm.ChainHop(connection.Span, 0, 3);
        using var hidden = TorchSharp.torch.zeros(1, 65536, Hidden);   // [1, 65536, 64], 16 MiB of float32
        for (int i = 0; i < 3; i++)
        {
            // A generous bound turns a hang into a failure with a message; the refusal itself takes milliseconds.
            var e = await Assert.ThrowsAsync<RpcException>(() => PetalsSharp.Client.RemoteCalls.ForwardAsync(connection, hop, hidden, null, null,
                options, CancellationToken.None).WaitAsync(TimeSpan.FromMinutes(3)));
            // Kestrel answers a DATA frame for a stream it has already dropped (an earlier refused call's frames, still in
            // flight) with a connection error, so now and then this call's status is lost with the connection: about 1
            // call in 300 under load, as Internal ("the HTTP/2 server closed the connection") or Unavailable
            // ("connection reset"). Either way the client reports at once, and the next call reconnects.
            if (e.StatusCode == StatusCode.ResourceExhausted)
                Assert.Contains("limit", e.Status.Detail);
            else
                Assert.True(e.StatusCode is StatusCode.Unavailable or StatusCode.Internal
                    && e.Status.Detail.Contains("connection", StringComparison.OrdinalIgnoreCase), $"{e.StatusCode}: {e.Status.Detail}");
        }
        // Still serving, through the same ServerConnection.
        using var small = TorchSharp.torch.randn(1, 8, Hidden);
        for (int attempt = 1; ; attempt++)
        {
            try
            {
                using var reply = await PetalsSharp.Client.RemoteCalls.ForwardAsync(connection, hop, small, null, null, options, CancellationToken.None);
                Assert.Equal([1, 8, Hidden], reply.shape);
                break;
            }
            // The last refusal may still take its connection down (above); the channel then reconnects.
            catch (RpcException e) when (attempt < 3 && e.StatusCode is StatusCode.Unavailable or StatusCode.Internal) { }
        }
    }

    /// <summary>Posts one hand-made gRPC frame over HTTP/2 (TLS, as every peer link); returns grpc-status and grpc-message.</summary>
    internal static async Task<(int Status, string Message)> PostFrameAsync(string address, string method, byte[] frame,
        string service = "petals.v1.BlockService")
    {
        using var http = new HttpClient(TestChannels.Handler()) { Timeout = TimeSpan.FromSeconds(60) };
        using var request = new HttpRequestMessage(HttpMethod.Post, TestChannels.Url(address, $"{service}/{method}"))
        {
            Version = HttpVersion.Version20, VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            Content = new ByteArrayContent(frame),
        };
        request.Content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/grpc");
        request.Headers.TryAddWithoutValidation("te", "trailers");
        using var reply = await http.SendAsync(request);
        await reply.Content.ReadAsByteArrayAsync();
        string? Header(string name) =>
            reply.TrailingHeaders.TryGetValues(name, out var t) ? t.First() : reply.Headers.TryGetValues(name, out var h) ? h.First() : null;
        return (int.Parse(Header("grpc-status") ?? "-1", CultureInfo.InvariantCulture), Uri.UnescapeDataString(Header("grpc-message") ?? ""));
    }

    [Theory]
    [InlineData("Info")]
    [InlineData("Push")]
    [InlineData("Forward")]
    public async Task A_frame_with_an_absurd_length_prefix_gets_a_clear_status(string method)
    {
        using var server = await StartAsync();
        // Not compressed, length 0xFFFFFFF0, then a few bytes of "message".
        byte[] frame = [0, 0xFF, 0xFF, 0xFF, 0xF0, 1, 2, 3, 4];
        var (status, message) = await PostFrameAsync(server.Address, method, frame);
        Assert.True(status is (int)StatusCode.ResourceExhausted or (int)StatusCode.InvalidArgument, $"{method}: status {status} '{message}'");
        Assert.Contains("4294967280", message);
        // Still serving.
        using var client = new ServerClient(server.Address);
        await client.Raw.InfoAsync(new InfoRequest(), deadline: DateTime.UtcNow.AddSeconds(60));
    }

    [Fact]
    public async Task Abandoned_calls_are_counted_as_cancelled_and_not_logged_as_failures()
    {
        using var server = await StartAsync("--metrics-port", "0");
        string metricsUrl = await MetricsUrlAsync(server);
        using var client = new ServerClient(server.Address);
        const int abandoned = 50;
        for (int i = 0; i < abandoned; i++)
        {
            using var x = TorchSharp.torch.randn(1, 64, Hidden);
            var chunks = PetalsSharp.Wire.TensorChunks.Split("hidden", PetalsSharp.Wire.TensorCodec.Encode(x)).ToList();
            using var call = client.Raw.Forward(deadline: DateTime.UtcNow.AddSeconds(60));
            await call.RequestStream.WriteAsync(new CallMessage { Header = ServerClient.Header(0, 3) });
            // Half walk away in the middle of the upload, half once the server has everything it needs to answer.
            var first = chunks[0].Chunk.Clone();
            if (i % 2 == 0)
            {
                first.Part = ByteString.CopyFrom(first.Part.Span[..16]);
                first.Last = false;
                await call.RequestStream.WriteAsync(new CallMessage { Chunk = first });
            }
            else
            {
                foreach (var m in chunks) await call.RequestStream.WriteAsync(m);
            }
            // Disposing a call that is still open resets its HTTP/2 stream (RST_STREAM CANCEL).
        }
        // The server sees each reset on its own schedule: wait until all are accounted for.
        var deadline = DateTime.UtcNow.AddSeconds(120);
        double cancelled = 0, served = 0;
        while (DateTime.UtcNow < deadline)
        {
            var samples = await ScrapeAsync(metricsUrl);
            cancelled = samples.GetValueOrDefault("petals_server_errors_total{rpc=\"forward\",status=\"Cancelled\"}");
            served = samples.GetValueOrDefault("petals_server_steps_total{rpc=\"forward\"}");
            if (cancelled + served >= abandoned) break;
            await Task.Delay(200);
        }
        var all = await ScrapeAsync(metricsUrl);
        string counts = string.Join(", ", all.Where(kv => kv.Key.StartsWith("petals_server_errors_total", StringComparison.Ordinal)
            || kv.Key.StartsWith("petals_server_steps_total", StringComparison.Ordinal)).Select(kv => $"{kv.Key} = {kv.Value}"));
        Assert.True(all.GetValueOrDefault("petals_server_errors_total{rpc=\"forward\",status=\"Internal\"}") == 0, counts);
        Assert.True(cancelled >= abandoned / 2, $"{cancelled} cancelled, {served} served of {abandoned} abandoned calls: {counts}");
        output.WriteLine($"{abandoned} abandoned calls: {cancelled} cancelled, {served} served; {counts}");
        var failures = server.Log.Split('\n').Where(l => l.Contains("fail:", StringComparison.Ordinal)).ToList();
        Assert.True(failures.Count == 0, $"{failures.Count} 'fail:' lines, e.g. {failures.FirstOrDefault()}\n{server.Log[..Math.Min(4000, server.Log.Length)]}");
    }

    internal static async Task<string> MetricsUrlAsync(ServerProcess server)
    {
        const string marker = "metrics on ";
        for (int i = 0; i < 600; i++)
        {
            var line = server.Log.Split('\n').FirstOrDefault(l => l.Contains(marker, StringComparison.Ordinal));
            if (line is not null) return line[(line.IndexOf(marker, StringComparison.Ordinal) + marker.Length)..].Trim();
            await Task.Delay(100);
        }
        throw new TimeoutException("the server printed no metrics URL");
    }

    internal static async Task<Dictionary<string, double>> ScrapeAsync(string url)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        var samples = new Dictionary<string, double>();
        foreach (var line in (await http.GetStringAsync(url)).Split('\n'))
        {
            if (line.Length == 0 || line.StartsWith('#')) continue;
            int space = line.LastIndexOf(' ');
            samples[line[..space]] = double.Parse(line[(space + 1)..], CultureInfo.InvariantCulture);
        }
        return samples;
    }
}
