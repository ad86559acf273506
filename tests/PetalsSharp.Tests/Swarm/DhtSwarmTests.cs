using System.Text.Json;
using PetalsSharp.Client;
using PetalsSharp.Dht;
using PetalsSharp.Server;
using PetalsSharp.Swarm;
using PetalsSharp.Tests.Cli;
using PetalsSharp.Wire.V1;
using Xunit;

namespace PetalsSharp.Tests.Swarm;

/// <summary>
/// A bootstrap DHT node, server processes that announce themselves, and clients (in-process and as a process) that
/// find them through the DHT alone.
/// </summary>
[Trait("Category", "Processes")]
[Collection(LlamaSwarmCollection.Name)]
public sealed class DhtSwarmTests
{
    static readonly string Model = LlamaSwarm.ModelDir;
    static readonly string Prefix = ModelNames.DhtPrefix(ModelNames.FromFolder(Model));

    static Task<DhtNode> BootstrapAsync(SwarmKey? key = null) =>
        DhtNode.StartAsync(new DhtNodeOptions { Host = "127.0.0.1", Port = 0, SwarmKey = key });

    static async Task<SwarmSnapshot> WaitAsync(DhtNode dht, Func<SwarmSnapshot, bool> done, double seconds = 120)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        while (true)
        {
            var snapshot = await SwarmReader.ReadAsync(dht, Prefix, 3);
            if (done(snapshot)) return snapshot;
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"swarm state not reached: {string.Join(" ", snapshot.Servers.Select(s => $"{s.Span}={s.State}"))}");
            await Task.Delay(200);
        }
    }

    [Fact]
    public async Task Servers_and_a_client_process_find_each_other_through_the_DHT_alone()
    {
        await using var bootstrap = await BootstrapAsync();
        using var a = await ServerProcess.StartAsync(Model, 0, 2, "--initial-peers", bootstrap.PeerAddress, "--update-period", "2");
        using var b = await ServerProcess.StartAsync(Model, 2, 3, "--initial-peers", bootstrap.PeerAddress, "--update-period", "2");
        var snapshot = await WaitAsync(bootstrap, s => s.Online.Count == 2);
        Assert.Empty(snapshot.Uncovered());
        Assert.All(snapshot.Online, s => Assert.True(s.Throughput > 0));

        using var r = Reference.Load("llama-gqa");
        var ids = r.IdsArg("generation.prompt_ids");
        var res = await CliRunner.RunAsync("generate", "--model", Model, "--initial-peers", bootstrap.Address,
            "--input-ids", ids, "--max-new-tokens", "12", "--greedy", "--json", "--show-route");
        Assert.True(res.ExitCode == 0, res.Stderr);
        using var doc = JsonDocument.Parse(res.Stdout);
        Assert.Equal(r["generation.new_tokens"].GetRawText().Replace(" ", ""), doc.RootElement.GetProperty("new_tokens").GetRawText());
        Assert.Contains($"route: {a.Address}[0:2] {b.Address}[2:3]", res.Stderr);

        var swarm = await CliRunner.RunAsync("swarm", "--initial-peers", bootstrap.Address, "--json");
        Assert.True(swarm.ExitCode == 0, swarm.Stderr);
        using var table = JsonDocument.Parse(swarm.Stdout);
        var model = table.RootElement.GetProperty("models").EnumerateArray().Single(m => m.GetProperty("dht_prefix").GetString() == Prefix);
        Assert.Equal(3, model.GetProperty("num_blocks").GetInt32());
        Assert.Equal(2, model.GetProperty("servers").GetArrayLength());
        Assert.All(model.GetProperty("coverage").EnumerateArray(), c => Assert.Equal(1, c.GetProperty("servers").GetInt32()));

        // Servers measure and announce their round trips to the servers that can follow them (the last has none).
        var pinged = await WaitAsync(bootstrap, x => x.Online.Any(v => v.Address == a.Address && v.NextPings.ContainsKey(b.Address)));
        Assert.InRange(pinged.Online.Single(v => v.Address == a.Address).NextPings[b.Address], 0, 2);
        Assert.Empty(pinged.Online.Single(v => v.Address == b.Address).NextPings);
    }

    [Fact]
    public async Task A_stopped_server_announces_OFFLINE_and_a_killed_one_expires()
    {
        await using var bootstrap = await BootstrapAsync();
        using var clean = await ServerProcess.StartAsync(Model, 0, 3, "--initial-peers", bootstrap.PeerAddress, "--update-period", "1");
        using var crash = await ServerProcess.StartAsync(Model, 0, 3, "--initial-peers", bootstrap.PeerAddress, "--update-period", "1");
        await WaitAsync(bootstrap, s => s.Online.Count == 2);
        await clean.StopAsync(TimeSpan.FromSeconds(10));
        var snapshot = await WaitAsync(bootstrap, s => s.Servers.Any(v => v.Address == clean.Address && v.State == ServerState.Offline));
        Assert.Contains(snapshot.Online, v => v.Address == crash.Address);
        crash.Kill();
        // Records live twice the update period (2 s); well within 10 s the killed server is gone.
        await WaitAsync(bootstrap, s => s.Servers.All(v => v.Address != crash.Address), seconds: 10);
    }

    [Fact]
    public async Task A_restarted_server_keeps_its_node_id()
    {
        var identity = Path.Combine(Directory.CreateTempSubdirectory("petals-id").FullName, "server.id");
        await using var bootstrap = await BootstrapAsync();
        string first;
        using (var s = await ServerProcess.StartAsync(Model, 0, 3, "--initial-peers", bootstrap.PeerAddress, "--identity", identity, "--update-period", "1"))
        {
            first = (await WaitAsync(bootstrap, x => x.Online.Count == 1)).Online[0].PeerId;
            await s.StopAsync(TimeSpan.FromSeconds(10));
        }
        using var again = await ServerProcess.StartAsync(Model, 0, 3, "--initial-peers", bootstrap.PeerAddress, "--identity", identity, "--update-period", "1");
        var snapshot = await WaitAsync(bootstrap, x => x.Online.Any(v => v.Address == again.Address));
        Assert.Equal(first, snapshot.Online.Single(v => v.Address == again.Address).PeerId);
    }

    [Fact]
    public async Task A_private_swarm_serves_only_clients_with_its_key()
    {
        var keyFile = Path.Combine(Directory.CreateTempSubdirectory("petals-key").FullName, "swarm.key");
        var key = SwarmKey.Generate();
        File.WriteAllText(keyFile, key.ToText());
        await using var bootstrap = await BootstrapAsync(key);
        using var server = await ServerProcess.StartAsync(Model, 0, 3, "--initial-peers", bootstrap.PeerAddress, "--swarm-key", keyFile, "--update-period", "2");
        await WaitAsync(bootstrap, s => s.Online.Count == 1);

        var outsider = await CliRunner.RunAsync("generate", "--model", Model, "--peers", server.Address, "--input-ids", "1,2,3");
        Assert.NotEqual(0, outsider.ExitCode);
        Assert.Contains("PermissionDenied", outsider.Stderr);
        var member = await CliRunner.RunAsync("generate", "--model", Model, "--initial-peers", bootstrap.Address, "--swarm-key", keyFile,
            "--input-ids", "1,2,3", "--max-new-tokens", "3", "--greedy", "--json");
        Assert.True(member.ExitCode == 0, member.Stderr);
        await Assert.ThrowsAnyAsync<Exception>(() => SwarmReader.JoinAsClientAsync([bootstrap.Address], swarmKey: null));
    }
}
