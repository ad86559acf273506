using Grpc.Core;
using PetalsSharp.Dht;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Swarm;
using PetalsSharp.Tests.Server;
using PetalsSharp.Wire.V1;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Balance;

/// <summary>An in-process auto-placed server moved by hand: the old span's sessions end, the new span serves.</summary>
public sealed class SpanSwapTests(EightBlockModel model) : IClassFixture<EightBlockModel>
{
    [Fact]
    public async Task Moving_ends_sessions_on_the_old_span_and_serves_the_new_one()
    {
        await using var bootstrap = await DhtNode.StartAsync(new DhtNodeOptions { Host = "127.0.0.1", Port = 0 });
        await using var server = BlockServer.Load(new ServerOptions
        {
            ModelDir = model.Dir, NumBlocks = 2, Host = "127.0.0.1", Port = 0, InitialPeers = [bootstrap.PeerAddress],
            FixedThroughput = 100, PlacementDelay = TimeSpan.Zero, RebalancePeriod = TimeSpan.Zero, UpdatePeriod = TimeSpan.FromSeconds(1),
        });
        Assert.Equal((0, 0), (server.Start, server.End));   // nothing loaded before joining
        await server.StartAsync();
        Assert.Equal((0, 2), (server.Start, server.End));   // an empty swarm: every window ties, the lowest start wins
        using var client = new ServerClient(server.Address);
        using var session = await client.OpenAsync(ServerClient.Open(1, 16, 0, 2));

        await server.MoveAsync(4, "test", CancellationToken.None);

        var ended = await Assert.ThrowsAsync<RpcException>(() => session.Call.ResponseStream.MoveNext(CancellationToken.None));
        Assert.Equal(StatusCode.Unavailable, ended.StatusCode);
        Assert.Contains("no longer serves blocks 0:2", ended.Status.Detail);
        Assert.Equal(1, server.Moves);
        Assert.Equal(0, server.ActiveSessions);

        var info = await client.Raw.InfoAsync(new InfoRequest());
        Assert.Equal((4, 6), (info.StartBlock, info.EndBlock));
        using (var ckpt = Checkpoint.Open(model.Dir))
            Assert.Equal([ckpt.BlockFingerprint(4), ckpt.BlockFingerprint(5)], info.BlockFingerprints);
        using var hidden = randn(1, 3, 64);
        using var output = await client.ForwardAsync(hidden, ServerClient.Header(4, 6));
        Assert.Equal([1L, 3, 64], output.shape);
        var refused = await Assert.ThrowsAsync<RpcException>(() => client.ForwardAsync(hidden, ServerClient.Header(0, 2)));
        Assert.Equal(StatusCode.InvalidArgument, refused.StatusCode);

        // The swarm sees one record per peer: the new span, ONLINE.
        var snapshot = await SwarmReader.ReadAsync(bootstrap, model.Prefix, 8);
        var self = Assert.Single(snapshot.Servers);
        Assert.Equal((4, 6, ServerState.Online), (self.Start, self.End, self.State));
        Assert.Equal(server.Dht!.Id.ToString(), self.PeerId);   // what the rebalancer uses to leave itself out
    }
}
