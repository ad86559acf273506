using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Net.Client;
using PetalsSharp.Dht;
using PetalsSharp.Dht.V1;
using Record = PetalsSharp.Dht.V1.Record;

namespace PetalsSharp.Tests.Security;

/// <summary>
/// The DHT service of the standalone node and of the server's own node: forged, expired, far-future and replayed
/// records (each refused with a reason in its StoreStatus), malformed requests, non-protobuf bytes, lying frames,
/// strings that are not UTF-8, and a stalled request.
/// </summary>
public sealed class DhtTarget(CampaignSwarm swarm) : IDisposable
{
    public const string Service = "petals.dht.v1.DhtService";
    const string S = "DHT service (gRPC)";
    readonly Lazy<GrpcChannel> _node = new(() => CampaignChannels.Create(swarm.DhtAddress));
    readonly Lazy<GrpcChannel> _server = new(() => CampaignChannels.Create(swarm.Server.Address));
    readonly Lazy<GrpcChannel> _frames = new(() => CampaignChannels.Create(swarm.DhtAddress));
    readonly Lazy<GrpcChannel> _serverFrames = new(() => CampaignChannels.Create(swarm.Server.Address));

    static ByteString Nonce(int bytes = 16) => ByteString.CopyFrom(RandomNumberGenerator.GetBytes(bytes));

    static Record Wire(SignedEntry e) => new() { Key = e.Key, Entry = e.ToWire() };

    static string NewKey() => $"campaign.{Guid.NewGuid():N}";

    /// <summary>An entry signed for an expiration in raw milliseconds, which need not be a valid date.</summary>
    static SignedEntry SignAt(NodeIdentity owner, string key, byte[] value, long ms) =>
        new(key, owner.Id.ToString(), value, ms, owner.PublicKey, owner.Sign(DhtRecords.CanonicalBytes(key, owner.Id.ToString(), value, ms)));

    static long InMs(TimeSpan fromNow) => DateTimeOffset.UtcNow.Add(fromNow).ToUnixTimeMilliseconds();

    /// <summary>A valid entry of a fresh identity, five minutes from expiring.</summary>
    static (NodeIdentity Owner, SignedEntry Entry) Honest(string? key = null)
    {
        var owner = NodeIdentity.CreateEphemeral();
        return (owner, SignAt(owner, key ?? NewKey(), "honest"u8.ToArray(), InMs(TimeSpan.FromMinutes(5))));
    }

    async Task<Outcome> StoreAsync(GrpcChannel channel, params Record[] records)
    {
        var reply = await new DhtService.DhtServiceClient(channel).StoreAsync(new StoreRequest { Nonce = Nonce(), Records = { records } },
            deadline: BlockTarget.Deadline());
        var status = reply.Statuses[0];
        return new Outcome(status.Accepted ? "Accepted" : "Refused", status.Reason);
    }

    HostileCase Store(string category, string name, Func<Record> record, bool onServer = false) =>
        new(S, category, onServer ? $"{name}, on the server's DHT node" : name, ["Refused"],
            () => StoreAsync(onServer ? _server.Value : _node.Value, record()));

    HostileCase Call(string category, string name, Func<Task<Outcome>> run, params string[] expected) =>
        new(S, category, name, expected.Length == 0 ? ["InvalidArgument"] : expected, run);

    public IEnumerable<HostileCase> All() =>
        Forged().Concat(Expiry()).Concat(Replayed()).Concat(Requests()).Concat(Garbage()).Concat(Framing()).Concat(Utf8());

    IEnumerable<HostileCase> Forged()
    {
        const string C = "forged DHT record";
        Record With(Func<SignedEntry, SignedEntry> edit) => Wire(edit(Honest().Entry));
        Record Forge(bool ownerKey)
        {
            using var attacker = NodeIdentity.CreateEphemeral();
            var (victim, _) = Honest();
            var key = NewKey();
            long ms = InMs(TimeSpan.FromMinutes(5));
            var signature = attacker.Sign(DhtRecords.CanonicalBytes(key, victim.Id.ToString(), "evil"u8, ms));
            return Wire(new SignedEntry(key, victim.Id.ToString(), "evil"u8.ToArray(), ms, ownerKey ? victim.PublicKey : attacker.PublicKey, signature));
        }
        Record ForeignKey(byte[] publicKey) => Wire(Honest().Entry with
        {
            PublicKey = publicKey,
            Subkey = NodeId.FromPublicKey(publicKey).ToString(),
            Signature = RandomNumberGenerator.GetBytes(64),
        });
        foreach (var onServer in new[] { false, true })
        {
            yield return Store(C, "random signature", () => With(e => e with { Signature = RandomNumberGenerator.GetBytes(64) }), onServer);
            yield return Store(C, "the victim's subkey and key, signed by the attacker", () => Forge(ownerKey: true), onServer);
            yield return Store(C, "the victim's subkey with the attacker's key", () => Forge(ownerKey: false), onServer);
        }
        yield return Store(C, "zero signature", () => With(e => e with { Signature = new byte[64] }));
        yield return Store(C, "value changed after signing", () => With(e => e with { Value = "evil"u8.ToArray() }));
        yield return Store(C, "key changed after signing", () => With(e => e with { Key = NewKey() }));
        yield return Store(C, "expiration changed after signing", () => With(e => e with { ExpirationUnixMs = e.ExpirationUnixMs + 1 }));
        yield return Store(C, "subkey in upper case", () => With(e => e with { Subkey = e.Subkey.ToUpperInvariant() }));
        yield return Store(C, "subkey that is not hex", () => With(e => e with { Subkey = new string('z', 40) }));
        yield return Store(C, "empty subkey", () => With(e => e with { Subkey = "" }));
        yield return Store(C, "subkey of 10 characters", () => With(e => e with { Subkey = e.Subkey[..10] }));
        yield return Store(C, "empty public key", () => With(e => e with { PublicKey = [] }));
        yield return Store(C, "public key of 129 bytes", () => With(e => e with { PublicKey = RandomNumberGenerator.GetBytes(129) }));
        yield return Store(C, "public key that is not DER", () => ForeignKey(RandomNumberGenerator.GetBytes(91)));
        yield return Store(C, "P-384 public key", () =>
        {
            using var p384 = ECDsa.Create(ECCurve.NamedCurves.nistP384);
            return ForeignKey(p384.ExportSubjectPublicKeyInfo());
        });
        foreach (var size in new[] { 0, 63, 65 })
            yield return Store(C, $"signature of {size} bytes", () => With(e => e with { Signature = new byte[size] }));
        var owner = NodeIdentity.CreateEphemeral();
        yield return Store(C, "empty key", () => Wire(SignAt(owner, "", "v"u8.ToArray(), InMs(TimeSpan.FromMinutes(5)))));
        yield return Store(C, "key of 257 bytes", () => Wire(SignAt(owner, new string('k', 257), "v"u8.ToArray(), InMs(TimeSpan.FromMinutes(5)))));
        yield return Store(C, "key with a control character", () => Wire(SignAt(owner, "campaign.\u0007", "v"u8.ToArray(), InMs(TimeSpan.FromMinutes(5)))));
        yield return Store(C, "value of 64 KiB + 1", () => Wire(SignAt(owner, NewKey(), new byte[DhtLimits.MaxValueBytes + 1], InMs(TimeSpan.FromMinutes(5)))));
        yield return Store(C, "record without an entry", () => new Record { Key = NewKey() });
    }

    IEnumerable<HostileCase> Expiry()
    {
        var owner = NodeIdentity.CreateEphemeral();
        foreach (var (name, ms) in new (string, Func<long>)[]
                 {
                     ("a second ago", () => InMs(TimeSpan.FromSeconds(-1))), ("an hour ago", () => InMs(TimeSpan.FromHours(-1))), ("at the epoch", () => 0),
                     ("at -1 ms", () => -1), ("at long.MinValue", () => long.MinValue), ("1 ms after the epoch", () => 1),
                 })
            yield return Store("expired record", $"expired {name}", () => Wire(SignAt(owner, NewKey(), "v"u8.ToArray(), ms())));
        foreach (var (name, ms) in new (string, Func<long>)[]
                 {
                     ("in 2 hours", () => InMs(TimeSpan.FromHours(2))), ("in a day", () => InMs(TimeSpan.FromDays(1))),
                     ("in 100 years", () => InMs(TimeSpan.FromDays(36500))), ("at long.MaxValue", () => long.MaxValue),
                     ("5 s past the TTL and clock skew", () => InMs(TimeSpan.FromHours(1) + DhtLimits.ClockSkew + TimeSpan.FromSeconds(5))),
                 })
            yield return Store("far-future expiration", $"expiring {name}", () => Wire(SignAt(owner, NewKey(), "v"u8.ToArray(), ms())));
    }

    IEnumerable<HostileCase> Replayed()
    {
        const string C = "replayed DHT record";
        // The owner's older entry comes back after a newer one was stored: a node must keep the newer.
        HostileCase Replay(string name, bool onServer, bool sameExpiration) => Call(C, onServer ? $"{name}, on the server's DHT node" : name, async () =>
        {
            var channel = onServer ? _server.Value : _node.Value;
            var owner = NodeIdentity.CreateEphemeral();
            var key = NewKey();
            long later = InMs(TimeSpan.FromMinutes(10));
            var older = SignAt(owner, key, "old"u8.ToArray(), sameExpiration ? later : InMs(TimeSpan.FromMinutes(5)));
            var newer = SignAt(owner, key, "new"u8.ToArray(), later);
            foreach (var setup in sameExpiration ? new[] { newer } : [older, newer])
                if (await StoreAsync(channel, Wire(setup)) is { Status: not "Accepted" } refused) return new Outcome("setup failed", refused.Message);
            return await StoreAsync(channel, Wire(older));
        }, "Refused");
        yield return Replay("an older entry after a newer one", onServer: false, sameExpiration: false);
        yield return Replay("an older entry after a newer one", onServer: true, sameExpiration: false);
        yield return Replay("another value with the same expiration", onServer: false, sameExpiration: true);
    }

    IEnumerable<HostileCase> Requests()
    {
        const string C = "malformed DHT request";
        foreach (var (where, channel) in new[] { ("", _node), (", on the server's DHT node", _server) })
        {
            DhtService.DhtServiceClient Client() => new(channel.Value);
            foreach (var size in new[] { 0, 15, 65 })
                yield return Call(C, $"Ping with a nonce of {size} bytes{where}", async () =>
                {
                    await Client().PingAsync(new PingRequest { Nonce = Nonce(size) }, deadline: BlockTarget.Deadline());
                    return Outcome.Ok("pinged");
                });
            yield return Call(C, $"FindNode with a target of 21 bytes{where}", async () =>
            {
                await Client().FindNodeAsync(new FindNodeRequest { Nonce = Nonce(), Target = Nonce(21) }, deadline: BlockTarget.Deadline());
                return Outcome.Ok("found");
            });
            yield return Call(C, $"FindValue with an empty key{where}", async () =>
            {
                await Client().FindValueAsync(new FindValueRequest { Nonce = Nonce(), Key = "" }, deadline: BlockTarget.Deadline());
                return Outcome.Ok("found");
            });
        }
        var node = new DhtService.DhtServiceClient(_node.Value);
        foreach (var size in new[] { 0, 19 })
            yield return Call(C, $"FindNode with a target of {size} bytes", async () =>
            {
                await node.FindNodeAsync(new FindNodeRequest { Nonce = Nonce(), Target = Nonce(size) }, deadline: BlockTarget.Deadline());
                return Outcome.Ok("found");
            });
        foreach (var (name, key) in new[] { ("257 bytes", new string('k', 257)), ("a control character", "campaign.\u0001") })
            yield return Call(C, $"FindValue with a key of {name}", async () =>
            {
                await node.FindValueAsync(new FindValueRequest { Nonce = Nonce(), Key = key }, deadline: BlockTarget.Deadline());
                return Outcome.Ok("found");
            });
        yield return Call(C, "Store of 257 records", async () =>
        {
            var record = Wire(Honest().Entry);
            await node.StoreAsync(new StoreRequest { Nonce = Nonce(), Records = { Enumerable.Repeat(record, DhtLimits.MaxRecordsPerStore + 1) } },
                deadline: BlockTarget.Deadline());
            return Outcome.Ok("stored");
        });
        yield return Call(C, "Store without a nonce", async () =>
        {
            await node.StoreAsync(new StoreRequest { Records = { Wire(Honest().Entry) } }, deadline: BlockTarget.Deadline());
            return Outcome.Ok("stored");
        });
    }

    static readonly (string Name, byte[] Bytes)[] NotProtobuf =
    [
        ("length-delimited field claiming 4 GiB", [0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]), ("wire type 7", [0x0F]),
        ("varint of 11 bytes", [0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80]), ("field number 0", [0x00, 0x01]),
        ("length-delimited field cut short", [0x12, 0x05, 0x01]),
    ];

    static readonly string[] Methods = ["Ping", "Store", "FindNode", "FindValue"];

    IEnumerable<HostileCase> Garbage()
    {
        const string C = "malformed protobuf";
        foreach (var (name, bytes) in NotProtobuf)
            foreach (var method in Methods)
                yield return Call(C, $"{method} message: {name}", () => CampaignChannels.UnaryBytesAsync(_node.Value, Service, method, bytes));
        foreach (var method in Methods)
            yield return Call(C, $"{method} message: wire type 7, on the server's DHT node", () => CampaignChannels.UnaryBytesAsync(_server.Value, Service, method, [0x0F]));
    }

    IEnumerable<HostileCase> Framing()
    {
        Task<Outcome> Post(Lazy<GrpcChannel> channel, string method, byte[] body, string? encoding = null) =>
            CampaignChannels.PostFramesAsync(channel.Value, $"/{Service}/{method}", new ByteArrayContent(body), grpcEncoding: encoding);
        var ping = new PingRequest { Nonce = Nonce() }.ToByteArray();
        foreach (var (where, channel) in new[] { ("", _frames), (", on the server's DHT node", _serverFrames) })
        {
            foreach (var method in new[] { "Ping", "FindNode" })
                yield return Call("oversized message", $"{method} frame declaring 0xFFFFFFF0 bytes{where}",
                    () => Post(channel, method, CampaignChannels.Frame([1, 2, 3], 0xFFFFFFF0)), "ResourceExhausted");
            yield return Call("slow-loris stream", $"Ping frame stalled after 10 of 100 bytes (1.5 s grpc-timeout){where}",
                () => BlockStreamCases.StallAsync(channel.Value, $"/{Service}/Ping"), "DeadlineExceeded");
        }
        yield return Call("oversized message", "Store message of 16 MiB + 16 bytes", () => StoreAsync(_node.Value,
            new Record { Key = NewKey(), Entry = new Entry { Value = ByteString.CopyFrom(new byte[(16 << 20) + 16]) } }), "ResourceExhausted");
        var bomb = BlockStreamCases.Gzip(64 << 20);
        yield return Call("oversized message", $"Store gzip bomb ({bomb.Length} bytes inflating to 64 MiB)",
            () => Post(_frames, "Store", CampaignChannels.Frame(bomb, flag: 1), "gzip"), "Unimplemented", "InvalidArgument", "ResourceExhausted");
        foreach (var method in Methods)
            yield return Call("truncated message", $"{method} frame declaring 100 bytes, ending after 10", () => Post(_frames, method, CampaignChannels.Frame(new byte[10], 100)));
        yield return Call("truncated message", "Ping body ending inside the frame header", () => Post(_frames, "Ping", [0, 0]));
        const string C = "malformed framing";
        yield return Call(C, "Ping frame with compression flag 7", () => Post(_frames, "Ping", CampaignChannels.Frame(ping, flag: 7)));
        yield return Call(C, "Ping compressed frame without grpc-encoding", () => Post(_frames, "Ping", CampaignChannels.Frame(ping, flag: 1)), "InvalidArgument", "Unimplemented");
        yield return Call(C, "Ping unary call with two messages", () => Post(_frames, "Ping", [.. CampaignChannels.Frame(ping), .. CampaignChannels.Frame(ping)]));
        yield return Call(C, "Ping unary call with no message", () => Post(_frames, "Ping", []));
    }

    IEnumerable<HostileCase> Utf8()
    {
        foreach (var (pattern, bad) in new (string, byte[])[] { ("0xFF", [0xFF]), ("overlong C0 AF", [0xC0, 0xAF]), ("surrogate ED A0 80", [0xED, 0xA0, 0x80]) })
        {
            var fields = new (string Field, string Method, Func<IMessage> Message)[]
            {
                ("FindValueRequest.key", "FindValue", () => new FindValueRequest { Nonce = Nonce(), Key = BlockSessionCases.Marker }),
                ("Record.key", "Store", () => new StoreRequest { Nonce = Nonce(), Records = { new Record { Key = BlockSessionCases.Marker, Entry = Honest().Entry.ToWire() } } }),
                ("Entry.subkey", "Store", () => new StoreRequest { Nonce = Nonce(), Records = { Wire(Honest().Entry with { Subkey = BlockSessionCases.Marker }) } }),
                ("Contact.address", "Ping", () => new PingRequest
                {
                    Nonce = Nonce(), Sender = new PetalsSharp.Dht.V1.Contact { NodeId = Nonce(20), PublicKey = Nonce(91), Address = BlockSessionCases.Marker },
                }),
            };
            foreach (var (field, method, message) in fields)
                yield return new(S, "invalid UTF-8", $"{field} with {pattern}", ["InvalidArgument"],
                    () => CampaignChannels.UnaryBytesAsync(_node.Value, Service, method, BlockSessionCases.Splice(message(), bad)), "UTF-8");
        }
    }

    public void Dispose()
    {
        foreach (var c in new[] { _node, _server, _frames, _serverFrames })
            if (c.IsValueCreated) c.Value.Dispose();
    }
}
