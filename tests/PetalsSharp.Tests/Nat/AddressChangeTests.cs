using System.Net;
using System.Net.Sockets;
using PetalsSharp.Client;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Swarm;
using Xunit;

namespace PetalsSharp.Tests.Nat;

/// <summary>
/// The reachability check runs again when a server's address changes (issue 20): a server whose new address nobody
/// can dial moves to a relay, and one that can be dialed again leaves it. Each time the swarm learns the new address
/// at once, and a client gets exact tokens either way.
/// </summary>
[Trait("Category", "Processes")]
public sealed class AddressChangeTests
{
    static async Task<ServerInfo> RecordAsync(InProcessRelay relay, int layers, Func<ServerInfo, bool> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (true)
        {
            var snapshot = await SwarmReader.ReadAsync(relay.Node, "stories260K", layers);
            if (snapshot.Online.SingleOrDefault() is { } s && condition(s)) return s;
            Assert.True(DateTime.UtcNow < deadline, "the swarm never showed the expected record: " + string.Join(", ", snapshot.Servers));
            await Task.Delay(50);
        }
    }

    static async Task AssertExactAsync(InProcessRelay relay, string dir)
    {
        using var reference = Reference.LoadFrom(dir);
        var c = reference["continuations"].EnumerateArray().First();
        var ids = c.GetProperty("new_token_ids").EnumerateArray().Select(x => x.GetInt32()).Take(10).ToList();
        using var lm = await DistributedModel.ConnectViaDhtAsync(dir, [relay.PeerAddress]);
        var result = await lm.GenerateAsync([c.GetProperty("prompt").GetString()!], new GenerationOptions { MaxNewTokens = ids.Count, IgnoreEos = true });
        Assert.Equal(ids, result.NewTokens[0]);
    }

    [SkippableFact]
    public async Task A_server_whose_address_changes_checks_again_moves_to_a_relay_and_back()
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        var dir = Fixtures.Stories260KDir!;
        int layers = ModelConfigLoader.Load(dir).NumLayers;
        await using var relay = await InProcessRelay.StartAsync();
        await using var server = BlockServer.Load(new ServerOptions
        {
            ModelDir = dir, StartBlock = 0, EndBlock = layers, Host = "127.0.0.1", Port = 0, InitialPeers = [relay.PeerAddress],
            FixedThroughput = 100, UpdatePeriod = TimeSpan.FromMinutes(20),   // the test runs the checks itself
        });
        await server.StartAsync();
        var direct = server.PublicAddress;
        Assert.Equal("", server.RelayName);
        Assert.False((await RecordAsync(relay, layers, _ => true)).IsRelayed);

        int nobody;
        using (var probe = new TcpListener(IPAddress.Loopback, 0))
        {
            probe.Start();
            nobody = ((IPEndPoint)probe.LocalEndpoint).Port;
        }
        server.DirectAddressProbe = () => $"127.0.0.1:{nobody}";   // a new lease: an address nobody can dial
        await server.CheckAddressAsync(CancellationToken.None);
        Assert.EndsWith("/" + relay.Node.Id, server.RelayName);
        var relayed = await RecordAsync(relay, layers, s => s.IsRelayed);
        Assert.Equal(server.PublicAddress, relayed.Address);
        await AssertExactAsync(relay, dir);

        server.DirectAddressProbe = () => direct;   // reachable again
        await server.CheckAddressAsync(CancellationToken.None);
        Assert.Equal("", server.RelayName);
        Assert.Equal(direct, server.PublicAddress);
        Assert.Equal(direct, (await RecordAsync(relay, layers, s => !s.IsRelayed)).Address);
        await AssertExactAsync(relay, dir);
        Assert.Equal(0, relay.Hub.Servers);
    }
}
