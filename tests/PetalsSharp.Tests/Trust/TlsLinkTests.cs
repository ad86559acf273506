using System.Text;
using PetalsSharp.Client;
using PetalsSharp.Dht;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Wire.V1;
using Xunit;

namespace PetalsSharp.Tests.Trust;

/// <summary>
/// TLS on every link (issue 19, acceptance 1), against real server processes of stories260K: what an on-path
/// observer reads is TLS records, client to server and server to server (push), tampering ends the call, and a
/// client refuses a host whose certificate is not the key that signed the record it routed by.
/// </summary>
[Trait("Category", "Processes")]
public sealed class TlsLinkTests(Xunit.Abstractions.ITestOutputHelper output)
{
    /// <summary>A TLS record header: handshake (0x16) or application data (0x17), then major version 3.</summary>
    internal static void AssertTlsRecords(byte[] bytes, string what)
    {
        Assert.True(bytes.Length >= 5, $"{what}: only {bytes.Length} bytes");
        Assert.True(bytes[0] == 0x16 && bytes[1] == 0x03, $"{what} starts with {Convert.ToHexString(bytes, 0, 5)}, not a TLS handshake record");
        // What a plain-text gRPC link carries in the clear: the HTTP/2 preface and the service's method paths.
        var text = Encoding.Latin1.GetString(bytes);
        Assert.DoesNotContain("PRI * HTTP/2.0", text);
        Assert.DoesNotContain("petals.v1.BlockService", text);
    }

    [SkippableFact]
    public async Task Client_links_and_pushes_between_servers_are_TLS_and_the_tokens_stay_exact()
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        var dir = Fixtures.Stories260KDir!;
        using var reference = Reference.LoadFrom(dir);
        int layers = ModelConfigLoader.Load(dir).NumLayers, half = layers / 2;
        using var second = await ServerProcess.StartAsync(dir, half, layers, "--metrics-port", "0");
        // Everything that reaches the second server, from the client and from the first server's pushes, crosses
        // the observer.
        await using var observer = new RecordingRelay(second.Address);
        using var first = await ServerProcess.StartAsync(dir, 0, half, "--push-peers", "127.0.0.1");
        var c = reference["continuations"].EnumerateArray().First();
        var expected = c.GetProperty("new_token_ids").EnumerateArray().Select(x => x.GetInt32()).ToList();
        using (var lm = await DistributedModel.ConnectAsync(dir, [first.Address, observer.Address]))
        {
            var result = await lm.GenerateAsync([c.GetProperty("prompt").GetString()!], new GenerationOptions { MaxNewTokens = 20, IgnoreEos = true });
            Assert.Equal(expected.Take(20), result.NewTokens[0]);
        }
        // Two connections at least: the client's own, and the first server's push lane.
        var links = observer.Links.ToList();
        Assert.True(links.Count >= 2, $"{links.Count} connection(s) crossed the observer; the push lane did not");
        foreach (var (link, i) in links.Select((l, i) => (l, i)))
        {
            AssertTlsRecords(RecordingRelay.Bytes(link.Up), $"connection {i}, dialer to server");
            AssertTlsRecords(RecordingRelay.Bytes(link.Down), $"connection {i}, server to dialer");
        }
        // And the second server did receive pushes (they crossed the observer: its only way in).
        var samples = await Server.HostileWireTests.ScrapeAsync(await Server.HostileWireTests.MetricsUrlAsync(second));
        var pushes = samples.Where(kv => kv.Key.StartsWith("petals_server_steps_total", StringComparison.Ordinal) && kv.Key.Contains("rpc=\"push"))
            .Sum(kv => kv.Value);
        Assert.True(pushes > 0, "no push reached the second server: " + string.Join("; ", samples.Keys.Where(k => k.Contains("steps"))));
        output.WriteLine($"{links.Count} TLS connections observed; bytes up/down: " +
            string.Join(", ", links.Select(l => $"{RecordingRelay.Bytes(l.Up).Length}/{RecordingRelay.Bytes(l.Down).Length}")));
    }

    [SkippableFact]
    public async Task Without_TLS_the_observer_reads_the_calls_and_a_TLS_client_cannot_talk_to_it()
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        var dir = Fixtures.Stories260KDir!;
        using var reference = Reference.LoadFrom(dir);
        int layers = ModelConfigLoader.Load(dir).NumLayers;
        using var server = await ServerProcess.StartAsync(dir, 0, layers, "--no-tls");
        await using var observer = new RecordingRelay(server.Address);
        var c = reference["continuations"].EnumerateArray().First();
        var expected = c.GetProperty("new_token_ids").EnumerateArray().Select(x => x.GetInt32()).Take(10).ToList();
        using (var lm = await DistributedModel.ConnectAsync(dir, [observer.Address], new RemoteOptions { Tls = false }))
        {
            var result = await lm.GenerateAsync([c.GetProperty("prompt").GetString()!], new GenerationOptions { MaxNewTokens = 10, IgnoreEos = true });
            Assert.Equal(expected, result.NewTokens[0]);
        }
        // The control for the test above: on a plain link the observer reads the preface and the method paths.
        var text = Encoding.Latin1.GetString(RecordingRelay.Bytes(observer.Links.First().Up));
        Assert.StartsWith("PRI * HTTP/2.0", text);
        Assert.Contains("petals.v1.BlockService", text);
        // A client with TLS on (the default) does not fall back to plain text.
        var config = ModelConfigLoader.Load(dir);
        await Assert.ThrowsAnyAsync<Exception>(() => ServerConnection.ConnectAsync(server.Address, config, new RemoteOptions { ConnectTimeout = TimeSpan.FromSeconds(10) }));
    }

    /// <summary>Info calls through a path that changes a byte (past the handshake) until one fails, as it must.</summary>
    internal static async Task<Grpc.Core.RpcException> TamperedCallsFailAsync(string address)
    {
        using var channel = TestChannels.Create(address);
        var client = new BlockService.BlockServiceClient(channel);
        var e = await Record.ExceptionAsync(async () =>
        {
            for (int i = 0; i < 20; i++)
                await client.InfoAsync(new InfoRequest(), deadline: DateTime.UtcNow.AddSeconds(30));
        });
        return Assert.IsType<Grpc.Core.RpcException>(e);
    }

    [SkippableFact]
    public async Task A_byte_changed_on_the_path_ends_the_call()
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        var dir = Fixtures.Stories260KDir!;
        int layers = ModelConfigLoader.Load(dir).NumLayers;
        using var server = await ServerProcess.StartAsync(dir, 0, layers);
        await using var attacker = new RecordingRelay(server.Address) { TamperAfter = 2000 };   // past the handshake
        output.WriteLine((await TamperedCallsFailAsync(attacker.Address)).Status.ToString());
        // The server itself is unharmed: a direct link still works.
        using var direct = TestChannels.Create(server.Address);
        Assert.Equal(layers, (await new BlockService.BlockServiceClient(direct).InfoAsync(new InfoRequest())).NumBlocks);
    }

    [SkippableFact]
    public async Task A_client_refuses_a_host_whose_certificate_is_not_the_records_signer_and_says_why()
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        var dir = Fixtures.Stories260KDir!;
        int layers = ModelConfigLoader.Load(dir).NumLayers;
        await using var bootstrap = await DhtNode.StartAsync(new DhtNodeOptions { Host = "127.0.0.1", Port = 0 });
        // An impostor serves the same model at an address; the honest server's signed record names that address
        // (a hijacked address, or a stale one taken over by someone else).
        using var impostor = await ServerProcess.StartAsync(dir, 0, layers);
        using var honest = await ServerProcess.StartAsync(dir, 0, layers, "--initial-peers", bootstrap.PeerAddress,
            "--public-address", impostor.Address, "--update-period", "5");
        var snapshot = await WaitForRecordAsync(bootstrap, dir, layers);
        var record = Assert.Single(snapshot.Online);
        Assert.Equal(impostor.Address, record.Address);

        var e = await Assert.ThrowsAnyAsync<Exception>(() => DistributedModel.ConnectViaDhtAsync(dir, [bootstrap.PeerAddress],
            new RemoteOptions { JoinTimeout = TimeSpan.FromSeconds(20) }));
        output.WriteLine(e.Message);
        Assert.Contains($"not the expected {record.PeerId}", e.Message);
        Assert.Contains(impostor.Address, e.Message);

        // The same check at the connection: pinned to the wrong id it fails, unpinned it connects (encrypted only).
        var config = ModelConfigLoader.Load(dir);
        var pinned = await Assert.ThrowsAnyAsync<Exception>(() => ServerConnection.ConnectAsync($"{impostor.Address}/{record.PeerId}", config, new RemoteOptions()));
        Assert.NotNull(PetalsSharp.Wire.PeerTls.IdentityMismatch(pinned));
        using var unpinned = await ServerConnection.ConnectAsync(impostor.Address, config, new RemoteOptions());
        Assert.Null(unpinned.PeerId);
    }

    static async Task<PetalsSharp.Swarm.SwarmSnapshot> WaitForRecordAsync(DhtNode dht, string dir, int layers)
    {
        var prefix = PetalsSharp.Swarm.ModelNames.DhtPrefix(PetalsSharp.Swarm.ModelNames.FromFolder(dir));
        var deadline = DateTime.UtcNow.AddSeconds(90);
        while (true)
        {
            var snapshot = await PetalsSharp.Swarm.SwarmReader.ReadAsync(dht, prefix, layers);
            if (snapshot.Online.Count > 0) return snapshot;
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"no record of {prefix} appeared");
            await Task.Delay(200);
        }
    }
}
