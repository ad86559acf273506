using PetalsSharp.Client;
using PetalsSharp.Dht;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Swarm;
using PetalsSharp.Wire.V1;
using Xunit;

namespace PetalsSharp.Tests.Balance;

/// <summary>A random 8-block llama (llama-gqa's shapes) so that gaps and bottlenecks have room to show.</summary>
public sealed class EightBlockModel : IDisposable
{
    public EightBlockModel()
    {
        Dir = Path.Combine(Directory.CreateTempSubdirectory("petals-balance").FullName, "llama-8");
        var config = ModelConfigLoader.Load(TestData.Path("llama-gqa")) with { NumLayers = 8 };
        RandomCheckpoint.Write(config, Dir, seed: 8);
        Prefix = ModelNames.DhtPrefix(ModelNames.FromFolder(Dir));
    }

    public string Dir { get; }
    public string Prefix { get; }

    public void Dispose() => Directory.Delete(Path.GetDirectoryName(Dir)!, recursive: true);
}

/// <summary>
/// Real server processes: an auto-placed server fills the weakest blocks and moves when a span is uncovered.
/// Throughputs are given (--throughput) so placements do not depend on how fast the test machine is.
/// </summary>
[Trait("Category", "Processes")]
public sealed class BalancingSwarmTests(EightBlockModel model, Xunit.Abstractions.ITestOutputHelper output) : IClassFixture<EightBlockModel>
{
    static Task<DhtNode> BootstrapAsync() => DhtNode.StartAsync(new DhtNodeOptions { Host = "127.0.0.1", Port = 0 });

    string[] Swarm(DhtNode bootstrap, double throughput, params string[] extra) =>
        ["--initial-peers", bootstrap.PeerAddress, "--update-period", "1", "--throughput", throughput.ToString(System.Globalization.CultureInfo.InvariantCulture), .. extra];

    async Task<SwarmSnapshot> WaitAsync(DhtNode dht, Func<SwarmSnapshot, bool> done, double seconds = 20)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        while (true)
        {
            var snapshot = await SwarmReader.ReadAsync(dht, model.Prefix, 8);
            if (done(snapshot)) return snapshot;
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException($"swarm state not reached: {string.Join(" ", snapshot.Servers.Select(s => $"{s.Address}{s.Span}={s.State}"))}");
            await Task.Delay(200);
        }
    }

    static bool Serves(SwarmSnapshot s, ServerProcess p, int start, int end) =>
        s.Online.Any(v => v.Address == p.Address && v.Start == start && v.End == end);

    [Fact]
    public async Task A_server_with_num_blocks_takes_the_weakest_blocks()
    {
        await using var bootstrap = await BootstrapAsync();
        using var whole = await ServerProcess.StartAsync(model.Dir, 0, 8, Swarm(bootstrap, 100));
        using var front = await ServerProcess.StartAsync(model.Dir, 0, 5, Swarm(bootstrap, 100));
        await WaitAsync(bootstrap, s => s.Online.Count == 2);

        // Blocks 0:5 have 200 tokens/s, blocks 5:8 only 100: three blocks go to 5:8.
        using var auto = await ServerProcess.StartAutoAsync(model.Dir, Swarm(bootstrap, 100, "--num-blocks", "3", "--placement-delay", "0"));
        var snapshot = await WaitAsync(bootstrap, s => s.Online.Any(v => v.Address == auto.Address));
        Assert.True(Serves(snapshot, auto, 5, 8), auto.Log);
        Assert.Equal([200, 200, 200, 200, 200, 200, 200, 200], BlockSelection.Throughputs(BlockSelection.Loads(snapshot), 8));
        Assert.Contains("chose blocks 5:8", auto.Log);
    }

    [Fact]
    public async Task An_auto_placed_server_moves_to_blocks_a_stopped_server_left_uncovered()
    {
        await using var bootstrap = await BootstrapAsync();
        using var front = await ServerProcess.StartAsync(model.Dir, 0, 4, Swarm(bootstrap, 100));
        using var back = await ServerProcess.StartAsync(model.Dir, 4, 8, Swarm(bootstrap, 200));
        await WaitAsync(bootstrap, s => s.Online.Count == 2);
        using var auto = await ServerProcess.StartAutoAsync(model.Dir,
            Swarm(bootstrap, 100, "--num-blocks", "4", "--placement-delay", "0", "--rebalance-period", "3"));
        await WaitAsync(bootstrap, s => Serves(s, auto, 0, 4));

        await back.StopAsync(TimeSpan.FromSeconds(10));
        // Checks come every 1.5–4.5 s; the move itself (JOINING, load, ONLINE, OFFLINE) takes well under a second here.
        var snapshot = await WaitAsync(bootstrap, s => Serves(s, auto, 4, 8), seconds: 30);
        // The log line follows the announcement; on a loaded machine give it a moment.
        for (int i = 0; i < 50 && !auto.Log.Contains("ONLINE for blocks 4:8"); i++) await Task.Delay(100);
        output.WriteLine(auto.Log);
        Assert.Empty(snapshot.Uncovered());
        Assert.Contains("moving from blocks 0:4 to 4:8", auto.Log);
        Assert.Contains("ONLINE for blocks 4:8", auto.Log);
        // Only the auto-placed server moved: the fixed one still serves 0:4.
        Assert.True(Serves(snapshot, front, 0, 4));
    }

    /// <summary>
    /// A client is mid-generation over auto[0:4] + back[4:8] when back is killed. The auto-placed server moves to
    /// the hole, which ends the client's session on its old blocks too; the client waits for the swarm to heal,
    /// fails both hops over (0:4 to a server that joined after it connected, 4:8 to the moved server), replays
    /// its history, and every greedy token equals the local model's.
    /// </summary>
    [Fact]
    public async Task A_client_keeps_generating_while_its_server_moves_to_heal_the_swarm()
    {
        using var local = CausalLM.Load(model.Dir);
        var prompts = new[] { new[] { 1, 5, 9, 42 }, new[] { 7, 3, 11, 2 } }.Select(p => (IReadOnlyList<int>)p).ToList();
        var options = new GenerationOptions { MaxNewTokens = 10, IgnoreEos = true };
        var expected = (await local.GenerateAsync(prompts, options)).NewTokens;

        await using var bootstrap = await BootstrapAsync();
        using var back = await ServerProcess.StartAsync(model.Dir, 4, 8, Swarm(bootstrap, 200));
        using var auto = await ServerProcess.StartAutoAsync(model.Dir,
            Swarm(bootstrap, 100, "--num-blocks", "4", "--placement-delay", "0", "--rebalance-period", "3"));
        await WaitAsync(bootstrap, s => Serves(s, auto, 0, 4) && Serves(s, back, 4, 8));
        var routes = new List<string>();
        using var lm = await DistributedModel.ConnectViaDhtAsync(model.Dir, [bootstrap.PeerAddress],
            new RemoteOptions { OnRoute = routes.Add, MaxRetries = 30, MinBackoff = TimeSpan.FromMilliseconds(100) });
        // Joins after the client connected: the client learns of it only when it has to look again.
        using var front = await ServerProcess.StartAsync(model.Dir, 0, 4, Swarm(bootstrap, 100));
        await WaitAsync(bootstrap, s => Serves(s, front, 0, 4));

        var tokens = new List<int>[] { [], [] };
        await foreach (var step in lm.StreamAsync(prompts, options))
        {
            for (int b = 0; b < 2; b++) tokens[b].Add(step.Tokens[b]!.Value);
            if (step.Index == 2) back.Kill();
        }
        output.WriteLine(string.Join("\n", routes));
        output.WriteLine(auto.Log);
        Assert.Equal(expected[0], tokens[0]);
        Assert.Equal(expected[1], tokens[1]);
        Assert.Equal($"route: {auto.Address}[0:4] {back.Address}[4:8]", routes[0]);
        Assert.Contains("moving from blocks 0:4 to 4:8", auto.Log);
        Assert.Equal($"route: {front.Address}[0:4] {auto.Address}[4:8]", routes[^1]);
    }
}
