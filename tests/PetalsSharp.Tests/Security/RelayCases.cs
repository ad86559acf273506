using Google.Protobuf;
using Grpc.Net.Client;
using PetalsSharp.Relay.V1;

namespace PetalsSharp.Tests.Security;

/// <summary>
/// The relay service of the campaign's DHT node (<c>petals dht --relay</c>), as a hostile server or stranger would
/// call it: bad node ids, calls that never send their first message, unknown connections, oversized chunks,
/// non-protobuf bytes, lying frames and strings that are not UTF-8 (issue 20 on top of issue 19's campaign).
/// </summary>
public sealed class RelayTarget(CampaignSwarm swarm) : IDisposable
{
    public const string Service = "petals.relay.v1.RelayService";
    const string S = "relay service (gRPC)";
    readonly Lazy<GrpcChannel> _channel = new(() => CampaignChannels.Create(swarm.DhtAddress));
    readonly Lazy<GrpcChannel> _frames = new(() => CampaignChannels.Create(swarm.DhtAddress));

    HostileCase Call(string category, string name, Func<Task<Outcome>> run, params string[] expected) =>
        new(S, category, name, expected.Length == 0 ? ["InvalidArgument"] : expected, run);

    Task<Outcome> Stream(string method, params byte[][] messages) => CampaignChannels.StreamBytesAsync(_channel.Value, Service, method, messages);

    public IEnumerable<HostileCase> All()
    {
        const string Bad = "malformed relay request";
        foreach (var (name, id) in new[] { ("empty", ""), ("3 characters", "abc"), ("39 hex digits", new string('a', 39)),
                     ("41 hex digits", new string('a', 41)), ("40 characters that are not hex", new string('z', 40)) })
            yield return Call(Bad, $"Register with a node id: {name}", () => Stream("Register", new RegisterRequest { NodeId = id }.ToByteArray()));
        yield return Call(Bad, "Register that ends before its first message", () => Stream("Register"));
        yield return Call(Bad, "Tunnel that ends before its first message", () => Stream("Tunnel"));
        foreach (var id in new ulong[] { 0, 12345, ulong.MaxValue })
            yield return Call(Bad, $"Tunnel naming connection {id}, never offered", () => Stream("Tunnel", new TunnelChunk { ConnectionId = id }.ToByteArray()), "NotFound");
        yield return Call("oversized message", "Register with a node id of 1 MiB",
            () => Stream("Register", new RegisterRequest { NodeId = new string('a', 1 << 20) }.ToByteArray()), "ResourceExhausted");
        yield return Call("oversized message", "Tunnel chunk of 66 KiB + 1",
            () => Stream("Tunnel", new TunnelChunk { ConnectionId = 1, Data = ByteString.CopyFrom(new byte[66 * 1024 + 1]) }.ToByteArray()), "ResourceExhausted");
        foreach (var method in new[] { "Register", "Tunnel" })
        {
            yield return Call("oversized message", $"{method} frame declaring 0xFFFFFFF0 bytes",
                () => CampaignChannels.PostFramesAsync(_frames.Value, $"/{Service}/{method}", new ByteArrayContent(CampaignChannels.Frame([1, 2, 3], 0xFFFFFFF0))),
                "ResourceExhausted");
            yield return Call("truncated message", $"{method} frame declaring 100 bytes, ending after 10",
                () => CampaignChannels.PostFramesAsync(_frames.Value, $"/{Service}/{method}", new ByteArrayContent(CampaignChannels.Frame(new byte[10], 100))));
            // The relay's own limit (10 s for a first message) or the caller's 1.5 s deadline, whichever ends it.
            yield return Call("slow-loris stream", $"{method} frame stalled after 10 of 100 bytes (1.5 s grpc-timeout)",
                () => BlockStreamCases.StallAsync(_frames.Value, $"/{Service}/{method}"), "DeadlineExceeded");
            foreach (var (name, bytes) in new (string, byte[])[]
                     {
                         ("length-delimited field claiming 4 GiB", [0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]), ("wire type 7", [0x0F]),
                         ("varint of 11 bytes", [0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80]),
                     })
                yield return Call("malformed protobuf", $"{method} message: {name}", () => Stream(method, bytes));
        }
        foreach (var (pattern, bad) in new (string, byte[])[] { ("0xFF", [0xFF]), ("overlong C0 AF", [0xC0, 0xAF]), ("surrogate ED A0 80", [0xED, 0xA0, 0x80]) })
            yield return Call("invalid UTF-8", $"RegisterRequest.node_id with {pattern}",
                () => Stream("Register", BlockSessionCases.Splice(new RegisterRequest { NodeId = BlockSessionCases.Marker }, bad)));
    }

    public void Dispose()
    {
        if (_channel.IsValueCreated) _channel.Value.Dispose();
        if (_frames.IsValueCreated) _frames.Value.Dispose();
    }
}
