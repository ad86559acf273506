using System.IO.Compression;
using Google.Protobuf;
using Grpc.Core;
using PetalsSharp.Wire.V1;
using static PetalsSharp.Tests.Security.BlockTarget;

namespace PetalsSharp.Tests.Security;

/// <summary>
/// Requests that are wrong around their tensors: sizes past every limit, absurd numbers, headers that name nothing
/// served, bytes that are no protobuf, frames that lie about their length, and uploads that stall.
/// </summary>
static class BlockStreamCases
{
    const string S = "block service (gRPC)";
    static readonly string[] Invalid = ["InvalidArgument"];
    static readonly string[] TooBig = ["ResourceExhausted", "InvalidArgument"];

    public static IEnumerable<HostileCase> All(BlockTarget b) =>
        Oversized(b).Concat(HugeValues(b)).Concat(Headers(b)).Concat(GarbageMessages(b)).Concat(Framing(b)).Concat(SlowLoris(b));

    static HostileCase Case(string category, string name, Func<Task<Outcome>> run, string[]? expected = null) =>
        new(S, category, name, expected ?? Invalid, run);

    static IEnumerable<HostileCase> Oversized(BlockTarget b)
    {
        const string C = "oversized message";
        foreach (var total in new[] { 1L << 40, long.MaxValue, -1, (1L << 30) + 1, 16384L * HiddenSize * 4 + 1024 + 1 })
            yield return Case(C, $"Forward hidden declaring {total} bytes", () => b.CallAsync(false,
                [new CallMessage { Header = Header() }, Chunk("hidden", total, new byte[16], false)]), TooBig);
        yield return Case(C, "Backward grad_output declaring 2^40 bytes", () => b.CallAsync(true,
            Messages(Header(), ("hidden", Hidden(1, 2))).Append(Chunk("grad_output", 1L << 40, new byte[16], false))), TooBig);
        var withPrompts = Header();
        withPrompts.WithPrompts = true;
        yield return Case(C, "Forward prompts declaring 2^40 bytes", () => b.CallAsync(false,
            [new CallMessage { Header = withPrompts }, Chunk("prompts", 1L << 40, new byte[16], false)]), TooBig);
        foreach (var shape in new long[][] { [1, 16385, HiddenSize], [16385, 1, HiddenSize], [200, 100, HiddenSize], [1L << 20, 1L << 20, HiddenSize] })
        {
            var first = DeclaredTensor(shape, 16, 16);
            yield return Case(C, $"Forward hidden whose header declares [{string.Join(", ", shape)}]", () => b.CallAsync(false,
                [new CallMessage { Header = Header() }, Chunk("hidden", first.Length, first, true)]), TooBig);
        }
        yield return Case(C, "inference step of 600 tokens in a 16-token session", () => b.StepAsync(Hidden(1, 600)), ["OutOfRange", "InvalidArgument"]);
        const int over = (16 << 20) + 16;   // one message past the 16 MiB every server accepts
        yield return Case(C, "Forward chunk message of 16 MiB + 16 bytes", () => b.CallAsync(false,
            [new CallMessage { Header = Header() }, Chunk("hidden", over, new byte[over], true)]), ["ResourceExhausted"]);
        yield return Case(C, "Backward chunk message of 16 MiB + 16 bytes", () => b.CallAsync(true,
            [new CallMessage { Header = Header() }, Chunk("hidden", over, new byte[over], true)]), ["ResourceExhausted"]);
        yield return Case(C, "inference step message of 16 MiB + 16 bytes", () => b.StepAsync(Raw([1, 1, HiddenSize], data: new byte[over])), ["ResourceExhausted"]);
        yield return Case(C, "Push message of 16 MiB + 16 bytes", () => b.PushAsync(new PushRequest
        {
            SessionId = "x", PushToken = "y", Step = new InferenceStep { StepId = "a", Hidden = Raw([1, 1, HiddenSize], data: new byte[over]) },
        }), ["ResourceExhausted"]);
        foreach (var method in new[] { "Info", "Push", "Forward", "Backward", "Inference", "PushStream" })
            yield return Case(C, $"{method} frame declaring 0xFFFFFFF0 bytes", () => PostAsync(b, method, CampaignChannels.Frame([1, 2, 3, 4], 0xFFFFFFF0)), ["ResourceExhausted"]);
        yield return Case(C, "Info frame declaring 16 MiB + 1 bytes", () => PostAsync(b, "Info", CampaignChannels.Frame([1, 2, 3, 4], (16u << 20) + 1)), ["ResourceExhausted"]);
        // A compressed message is inflated by the framework before anyone sees it: 64 KiB of gzip holds 64 MiB of zeros.
        var bomb = Gzip(64 << 20);
        foreach (var method in new[] { "Info", "Forward" })
            yield return Case(C, $"{method} gzip bomb ({bomb.Length} bytes inflating to 64 MiB)", () => PostAsync(b, method,
                CampaignChannels.Frame(bomb, flag: 1), "gzip"), ["Unimplemented", "InvalidArgument", "ResourceExhausted"]);
    }

    static IEnumerable<HostileCase> HugeValues(BlockTarget b)
    {
        const string C = "huge or negative numbers";
        foreach (var batch in new[] { 0, -1, 257, int.MaxValue })
            yield return Case(C, $"OpenSession batch_size {batch}", () => b.InferenceAsync(Open(batch: batch)));
        foreach (var length in new[] { 0, -5, 513, int.MaxValue })
            yield return Case(C, $"OpenSession max_length {length}", () => b.InferenceAsync(Open(maxLength: length)));
        foreach (var pad in new[] { -1, int.MaxValue })
        {
            var open = Open();
            open.Open.LeftPadding.Add(pad);
            yield return Case(C, $"OpenSession left_padding {pad}", () => b.InferenceAsync(open));
        }
        foreach (var from in new[] { -1, int.MaxValue })
            yield return Case(C, $"start_from_position {from}", () => b.InferenceAsync(Open(), Step("a", Hidden(1, 1), from: from)), ["InvalidArgument", "OutOfRange"]);
        foreach (var id in new[] { 1L, -1, long.MaxValue })
            yield return Case(C, $"hypo_ids [{id}] for 1 row", () => b.StepAsync(Hidden(1, 1), hypoIds: Ids(id)));
        foreach (var pad in new[] { -1, 3, int.MinValue })
        {
            var header = Header();
            header.LeftPadding.Add(pad);
            yield return Case(C, $"CallHeader left_padding {pad} for 2 tokens", () => b.ForwardAsync(Hidden(1, 2), header));
        }
        foreach (var count in new[] { 1, 17 })
        {
            var step = Step("a", Hidden(1, 1));
            for (int i = 0; i < count; i++) step.Step.NextServers.Add(new NextServer { Address = $"127.0.0.1:{1000 + i}", SessionId = "n", StepId = "m" });
            yield return Case(C, $"{count} next_servers after the last block", () => b.InferenceAsync(Open(), step));
        }
        yield return Case(C, "session_id of 129 characters", () => b.InferenceAsync(Open(id: new string('s', 129))));
        yield return Case(C, "session_id of 100000 characters", () => b.InferenceAsync(Open(id: new string('s', 100_000))));
        yield return Case(C, "step_id of 129 characters", () => b.InferenceAsync(Open(), Step(new string('t', 129), Hidden(1, 1))));
        yield return Case(C, "push_token of 129 characters", () => b.InferenceAsync(Open(token: new string('p', 129))));
    }

    static IEnumerable<HostileCase> Headers(BlockTarget b)
    {
        const string C = "invalid header fields";
        foreach (var (start, end) in new[] { (0, 6), (3, 2), (2, 2), (-1, 2), (0, int.MaxValue), (int.MinValue, 1) })
            yield return Case(C, $"Forward blocks [{start}, {end})", () => b.ForwardAsync(Hidden(1, 2), Header(start, end)));
        foreach (var c in new[] { 42, -1 })
        {
            var header = Header();
            header.OutputCompression = (Compression)c;
            yield return Case(C, $"Forward output_compression {c}", () => b.ForwardAsync(Hidden(1, 2), header));
        }
        var adapter = Header();
        adapter.ActiveAdapter = "no-such-adapter";
        yield return Case(C, "Forward with an adapter the server lacks", () => b.ForwardAsync(Hidden(1, 2), adapter), ["FailedPrecondition"]);
        var prompts = Header();
        prompts.WithPrompts = true;
        yield return Case(C, "Forward announcing prompts it never sends", () => b.ForwardAsync(Hidden(1, 2), prompts));
        foreach (var (start, end) in new[] { (0, 6), (4, 1), (-3, 2) })
            yield return Case(C, $"OpenSession blocks [{start}, {end})", () => b.InferenceAsync(Open(start: start, end: end)));
        var compression = Open();
        compression.Open.OutputCompression = (Compression)99;
        yield return Case(C, "OpenSession output_compression 99", () => b.InferenceAsync(compression));
        var openAdapter = Open();
        openAdapter.Open.ActiveAdapter = "no-such-adapter";
        yield return Case(C, "OpenSession with an adapter the server lacks", () => b.InferenceAsync(openAdapter), ["FailedPrecondition"]);
        yield return Case(C, "step before OpenSession", () => b.InferenceAsync(Step("a", Hidden(1, 1))), ["FailedPrecondition"]);
        yield return Case(C, "OpenSession twice in one stream", () => b.InferenceAsync(Open(), Open()), ["FailedPrecondition"]);
        yield return Case(C, "empty InferenceRequest", () => b.InferenceAsync(Open(), new InferenceRequest()));
        yield return Case(C, "empty step_id", () => b.InferenceAsync(Open(), Step("", Hidden(1, 1))));
        yield return Case(C, "Forward CallHeader twice", () => b.CallAsync(false, [new CallMessage { Header = Header() }, new CallMessage { Header = Header() }]));
        yield return Case(C, "Forward empty CallMessage", () => b.CallAsync(false, [new CallMessage { Header = Header() }, new CallMessage()]));
        yield return Case(C, "Forward tensor named 'weights'", () => b.CallAsync(false, Messages(Header(), ("weights", Hidden(1, 2)))));
        yield return Case(C, "Backward hidden sent twice", () => b.CallAsync(true, Messages(Header(), ("hidden", Hidden(1, 2)), ("hidden", Hidden(1, 2)))));
        var serialized = Hidden(1, 2).ToByteArray();
        yield return Case(C, "Backward grad_output before hidden is complete", () => b.CallAsync(true,
            [new CallMessage { Header = Header() }, Chunk("hidden", serialized.Length, serialized.AsSpan(0, 10), false), Chunk("grad_output", 10, new byte[10], true)]));
    }

    /// <summary>Bytes no protobuf parser accepts, as the whole message of each method.</summary>
    static readonly (string Name, byte[] Bytes)[] Garbage =
    [
        ("length-delimited field claiming 4 GiB", [0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]),
        ("wire type 7", [0x0F]),
        ("varint of 11 bytes", [0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80]),
        ("field number 0", [0x00, 0x01]),
        ("length-delimited field cut short", [0x0A, 0x05, 0x01]),
    ];

    static IEnumerable<HostileCase> GarbageMessages(BlockTarget b)
    {
        const string C = "malformed protobuf";
        foreach (var (name, bytes) in Garbage)
        {
            foreach (var method in new[] { "Info", "Push" })
                yield return Case(C, $"{method} message: {name}", () => CampaignChannels.UnaryBytesAsync(b.Channel, Service, method, bytes));
            foreach (var method in new[] { "Forward", "Backward", "Inference", "PushStream" })
                yield return Case(C, $"{method} message: {name}", () => CampaignChannels.StreamBytesAsync(b.Channel, Service, method, bytes));
        }
    }

    static IEnumerable<HostileCase> Framing(BlockTarget b)
    {
        var info = new InfoRequest().ToByteArray();
        foreach (var method in new[] { "Info", "Push", "Forward", "Inference" })
            yield return Case("truncated message", $"{method} frame declaring 100 bytes, ending after 10",
                () => PostAsync(b, method, CampaignChannels.Frame(new byte[10], 100)));
        foreach (var method in new[] { "Info", "Forward" })
            yield return Case("truncated message", $"{method} body ending inside the frame header", () => PostAsync(b, method, [0, 0, 0]));
        const string C = "malformed framing";
        foreach (var method in new[] { "Info", "Forward" })
        {
            yield return Case(C, $"{method} frame with compression flag 7", () => PostAsync(b, method, CampaignChannels.Frame(info, flag: 7)));
            yield return Case(C, $"{method} compressed frame without grpc-encoding", () => PostAsync(b, method, CampaignChannels.Frame(info, flag: 1)),
                ["InvalidArgument", "Unimplemented"]);
        }
        foreach (var method in new[] { "Info", "Push" })
        {
            yield return Case(C, $"{method} unary call with two messages", () => PostAsync(b, method, [.. CampaignChannels.Frame(info), .. CampaignChannels.Frame(info)]));
            yield return Case(C, $"{method} unary call with no message", () => PostAsync(b, method, []));
        }
    }

    static IEnumerable<HostileCase> SlowLoris(BlockTarget b)
    {
        const string C = "slow-loris stream";
        string[] expired = ["DeadlineExceeded"];
        // A stream whose reply has begun (headers, a first message) is ended at its deadline by an HTTP/2 reset.
        string[] ended = ["DeadlineExceeded", "Cancelled"];
        var serialized = Hidden(1, 2).ToByteArray();
        yield return Case(C, "Forward header, then silence", () => b.CallAsync(false, [new CallMessage { Header = Header() }], complete: false), expired);
        yield return Case(C, "Forward 10 bytes of hidden, then silence", () => b.CallAsync(false,
            [new CallMessage { Header = Header() }, Chunk("hidden", serialized.Length, serialized.AsSpan(0, 10), false)], complete: false), expired);
        yield return Case(C, "Backward with half of grad_output, then silence", () => b.CallAsync(true,
            Messages(Header(), ("hidden", Hidden(1, 2))).Append(Chunk("grad_output", serialized.Length, serialized.AsSpan(0, serialized.Length / 2), false)),
            complete: false), expired);
        // The server's own deadline (grpc-timeout) ends these, so the status and its message are the server's.
        yield return Case(C, "Inference stream that never opens a session (1.5 s grpc-timeout)",
            () => StallAsync(b.FrameChannel, $"/{Service}/Inference", []), expired);
        yield return Case(C, "Inference stream silent after OpenSession (1.5 s grpc-timeout)",
            () => StallAsync(b.FrameChannel, $"/{Service}/Inference", CampaignChannels.Frame(Open().ToByteArray())), ended);
        yield return Case(C, "PushStream that never pushes (1.5 s grpc-timeout)", () => StallAsync(b.FrameChannel, $"/{Service}/PushStream", []), ended);
        yield return Case(C, "Info frame stalled after 10 of 100 bytes (1.5 s grpc-timeout)", () => StallAsync(b.FrameChannel, $"/{Service}/Info"), expired);
    }

    /// <summary>
    /// Sends <paramref name="first"/> (by default a frame that promises 100 bytes and brings 10) and stalls until the
    /// server gives up on the call at its 1.5 s grpc-timeout.
    /// </summary>
    internal static async Task<Outcome> StallAsync(Grpc.Net.Client.GrpcChannel channel, string path, byte[]? first = null)
    {
        var release = new TaskCompletionSource();
        try
        {
            return await CampaignChannels.PostFramesAsync(channel, path,
                new StallingContent(first ?? CampaignChannels.Frame(new byte[10], 100), release.Task), TimeSpan.FromSeconds(1.5));
        }
        finally { release.TrySetResult(); }
    }

    static Task<Outcome> PostAsync(BlockTarget b, string method, byte[] body, string? encoding = null) =>
        CampaignChannels.PostFramesAsync(b.FrameChannel, $"/{Service}/{method}", new ByteArrayContent(body), grpcEncoding: encoding);

    internal static byte[] Gzip(int zeros)
    {
        using var output = new MemoryStream();
        using (var gzip = new GZipStream(output, CompressionLevel.SmallestSize, leaveOpen: true))
        {
            var block = new byte[1 << 20];
            for (int left = zeros; left > 0; left -= block.Length) gzip.Write(block, 0, Math.Min(block.Length, left));
        }
        return output.ToArray();
    }
}
