using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using PetalsSharp.Client;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Testing;
using PetalsSharp.Tests.Cli;
using PetalsSharp.Wire.V1;
using Xunit;

namespace PetalsSharp.Tests.Nat;

/// <summary>
/// Volunteers behind NAT (issue 20), with real server processes of stories260K: a server with no inbound port is
/// reached through a relay (client and push), the startup dial-back check sends an unreachable server to a relay by
/// itself, a killed relay is replaced while a generation goes on, and the relay carries only TLS it cannot change.
/// </summary>
[Trait("Category", "Processes")]
public sealed class RelayTests(Xunit.Abstractions.ITestOutputHelper output)
{
    static string Dir => Fixtures.Stories260KDir!;

    static List<(string Prompt, int[] Ids)> Continuations()
    {
        using var reference = Reference.LoadFrom(Dir);
        return reference["continuations"].EnumerateArray().Select(c => (c.GetProperty("prompt").GetString()!,
            c.GetProperty("new_token_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray())).ToList();
    }

    static async Task AssertExactAsync(CausalLM lm, int count = 2)
    {
        foreach (var (prompt, ids) in Continuations().Take(count))
        {
            var result = await lm.GenerateAsync([prompt], new GenerationOptions { MaxNewTokens = Math.Min(20, ids.Length), IgnoreEos = true });
            Assert.Equal(ids.Take(20), result.NewTokens[0]);
        }
    }

    /// <summary>Stderr and stdout are read separately: a log line written before "listening on" may arrive after it.</summary>
    static async Task WaitForLogAsync(ServerProcess server, string text)
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (!server.Log.Contains(text, StringComparison.Ordinal))
        {
            Assert.True(DateTime.UtcNow < deadline, $"no '{text}' in the server's log:\n{server.Log}");
            await Task.Delay(50);
        }
    }

    [SkippableFact]
    public async Task A_server_with_no_inbound_port_serves_through_a_relay_pushes_included_and_the_swarm_shows_it_relayed()
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        int layers = ModelConfigLoader.Load(Dir).NumLayers;
        await using var relay = await InProcessRelay.StartAsync();
        using var direct = await ServerProcess.StartAsync(Dir, 0, 3, "--initial-peers", relay.PeerAddress, "--throughput", "100");
        // The only server of blocks 3..5, and it cannot be dialed: a Unix socket is all it listens on.
        using var relayed = await ServerProcess.StartAsync(Dir, 3, layers, "--initial-peers", relay.PeerAddress, "--throughput", "100",
            "--reachability", "relay");
        Assert.StartsWith("unix:", relayed.Address);
        Assert.Empty(ListeningSockets.TcpPorts(relayed.ProcessId));
        Assert.NotEmpty(ListeningSockets.TcpPorts(direct.ProcessId));   // the check sees listeners where there are some

        using (var lm = await DistributedModel.ConnectViaDhtAsync(Dir, [relay.PeerAddress]))
        {
            await AssertExactAsync(lm);
            // The direct server handed its outputs to the relayed one (through the relay: its only way in).
            Assert.True(((RemoteSequential)lm.Blocks).PushedSteps > 0, "no step was pushed from server to server");
        }
        Assert.Equal(1, relay.Hub.Servers);
        var links = relay.Links.ToList();
        Assert.True(links.Count >= 2, $"{links.Count} relayed connection(s): the client's and the push lane's expected");
        foreach (var (link, i) in links.Select((l, i) => (l, i)))
        {
            Trust.TlsLinkTests.AssertTlsRecords(link.Up, $"relayed connection {i}, client to server");
            Trust.TlsLinkTests.AssertTlsRecords(link.Down, $"relayed connection {i}, server to client");
        }

        var swarm = await CliRunner.RunAsync("swarm", "--initial-peers", relay.PeerAddress, "--json");
        Assert.True(swarm.ExitCode == 0, swarm.Stderr);
        using var json = JsonDocument.Parse(swarm.Stdout);
        var servers = json.RootElement.GetProperty("models").EnumerateArray().Single().GetProperty("servers").EnumerateArray().ToList();
        var behind = servers.Single(s => s.GetProperty("start").GetInt32() == 3);
        Assert.Equal("relayed", behind.GetProperty("reachability").GetString());
        Assert.EndsWith("/" + relay.Node.Id, behind.GetProperty("relay").GetString());
        Assert.True(behind.GetProperty("verified").GetBoolean());
        var front = servers.Single(s => s.GetProperty("start").GetInt32() == 0);
        Assert.Equal("direct", front.GetProperty("reachability").GetString());
        Assert.Equal("", front.GetProperty("relay").GetString());
        output.WriteLine($"{links.Count} relayed connections; bytes up/down: " + string.Join(", ", links.Select(l => $"{l.Up.Length}/{l.Down.Length}")));
    }

    [SkippableFact]
    public async Task A_server_announcing_an_address_nobody_can_dial_finds_out_at_start_and_switches_to_a_relay()
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        int layers = ModelConfigLoader.Load(Dir).NumLayers;
        await using var relay = await InProcessRelay.StartAsync();
        int nobody;
        using (var probe = new TcpListener(IPAddress.Loopback, 0))
        {
            probe.Start();
            nobody = ((IPEndPoint)probe.LocalEndpoint).Port;
        }
        // --reachability auto (the default): it listens, but announces a port where nothing does.
        using var server = await ServerProcess.StartAsync(Dir, 0, layers, "--initial-peers", relay.PeerAddress, "--throughput", "100",
            "--public-address", $"127.0.0.1:{nobody}");
        Assert.Contains("reachable at 127.0.0.1:", server.Log);   // stdout, printed before "listening on"
        await WaitForLogAsync(server, $"127.0.0.1:{nobody} is not reachable from the swarm");
        await WaitForLogAsync(server, "switching to relay mode");
        using var lm = await DistributedModel.ConnectViaDhtAsync(Dir, [relay.PeerAddress]);
        var record = Assert.Single(((RemoteSequential)lm.Blocks).Servers);
        Assert.NotEqual($"127.0.0.1:{nobody}", record.Address);
        Assert.True(record.ToServerInfo().IsRelayed);
        await AssertExactAsync(lm, count: 1);
    }

    [SkippableFact]
    public async Task When_its_relay_dies_mid_generation_the_server_registers_with_another_and_the_client_fails_over_exactly()
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        int layers = ModelConfigLoader.Load(Dir).NumLayers;
        using var bootstrap = ChildProcess.Start(["dht", "--host", "127.0.0.1", "--port", "0"]);
        var peers = await bootstrap.WaitForLineAsync("initial peers: ");
        using var relayA = ChildProcess.Start(["dht", "--host", "127.0.0.1", "--port", "0", "--relay", "--initial-peers", peers]);
        using var relayB = ChildProcess.Start(["dht", "--host", "127.0.0.1", "--port", "0", "--relay", "--initial-peers", peers]);
        var relays = new Dictionary<string, ChildProcess>
        {
            [await relayA.WaitForLineAsync("initial peers: ")] = relayA,
            [await relayB.WaitForLineAsync("initial peers: ")] = relayB,
        };
        await relayA.WaitForLineAsync("relay: ");
        await relayB.WaitForLineAsync("relay: ");
        using var direct = await ServerProcess.StartAsync(Dir, 0, 3, "--initial-peers", peers, "--throughput", "100");
        using var relayed = await ServerProcess.StartAsync(Dir, 3, layers, "--initial-peers", peers, "--throughput", "100", "--reachability", "relay");
        var first = relays.Single(r => relayed.Log.Contains($"via relay {r.Key}")).Value;
        var second = relays.Single(r => r.Value != first).Key;

        var (prompt, ids) = Continuations().First(c => c.Ids.Length >= 24);
        using var lm = await DistributedModel.ConnectViaDhtAsync(Dir, [peers]);
        var tokens = new List<int>();
        await foreach (var step in lm.StreamAsync([prompt], new GenerationOptions { MaxNewTokens = 24, IgnoreEos = true }))
        {
            tokens.Add(step.Tokens[0]!.Value);
            if (tokens.Count == 6) first.Kill();   // kill -9 the relay the last hop is reached through
        }
        Assert.Equal(ids.Take(24), tokens);
        await WaitForLogAsync(relayed, "registering with another");
        await WaitForLogAsync(relayed, $"reachable through relay {second}");
        output.WriteLine(string.Join("\n", relayed.Log.Split('\n').Where(l => l.Contains("relay"))));
    }

    [SkippableFact]
    public async Task A_server_run_with_relay_carries_another_server_that_has_no_inbound_port()
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        int layers = ModelConfigLoader.Load(Dir).NumLayers;
        using var bootstrap = ChildProcess.Start(["dht", "--host", "127.0.0.1", "--port", "0"]);   // no relay of its own
        var peers = await bootstrap.WaitForLineAsync("initial peers: ");
        using var volunteer = await ServerProcess.StartAsync(Dir, 0, 3, "--initial-peers", peers, "--throughput", "100", "--relay");
        await WaitForLogAsync(volunteer, "relaying for servers behind NAT");
        using var behind = await ServerProcess.StartAsync(Dir, 3, layers, "--initial-peers", peers, "--throughput", "100", "--reachability", "relay");
        Assert.Contains($"via relay {volunteer.Address}/", behind.Log);   // stdout, printed before "listening on"
        using var lm = await DistributedModel.ConnectViaDhtAsync(Dir, [peers]);
        await AssertExactAsync(lm, count: 1);
    }

    [SkippableFact]
    public async Task A_byte_the_relay_changes_ends_the_call_and_the_server_stays_whole()
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        int layers = ModelConfigLoader.Load(Dir).NumLayers;
        await using var relay = await InProcessRelay.StartAsync();
        using var server = await ServerProcess.StartAsync(Dir, 0, layers, "--initial-peers", relay.PeerAddress, "--throughput", "100",
            "--reachability", "relay");
        var snapshot = await PetalsSharp.Swarm.SwarmReader.ReadAsync(relay.Node, "stories260K", layers);
        var record = Assert.Single(snapshot.Online);
        Assert.True(record.IsRelayed);
        relay.TamperAfter = 2000;   // past the TLS handshake: inside an application-data record
        output.WriteLine((await Trust.TlsLinkTests.TamperedCallsFailAsync(record.Address)).Status.ToString());
        // An honest relay again: the same server answers through it.
        relay.TamperAfter = null;
        using var again = TestChannels.Create(record.Address);
        Assert.Equal(layers, (await new BlockService.BlockServiceClient(again).InfoAsync(new InfoRequest(),
            deadline: DateTime.UtcNow.AddSeconds(30))).NumBlocks);
    }
}
