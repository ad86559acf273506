using Grpc.Core;
using PetalsSharp.Dht;
using Xunit;

namespace PetalsSharp.Tests.Dht;

/// <summary>
/// The dial-back a server's reachability check asks for (issue 20): a node dials only the caller's own IP, says
/// why a dial failed, and answers at a bounded rate.
/// </summary>
public sealed class DialBackTests
{
    [Fact]
    public async Task A_node_dials_back_only_the_callers_address_says_why_a_dial_failed_and_answers_at_a_bounded_rate()
    {
        await using var node = await DhtNode.StartAsync(new DhtNodeOptions { Host = "127.0.0.1", Port = 0 });
        using var caller = NodeIdentity.CreateEphemeral();
        var self = DhtWire.ToWire(new Contact(caller.Id, caller.PublicKey, ""));
        var rpc = new DhtRpc(caller, () => self, null, TimeSpan.FromSeconds(30), tls: true);
        var peer = new Contact(node.Id, node.Identity.PublicKey, node.Address);

        // A third party's address: no dial and no verdict, so a check cannot aim the node at someone else.
        var elsewhere = await Assert.ThrowsAsync<RpcException>(() => rpc.DialBackAsync(peer, "192.0.2.7:31330", TimeSpan.FromSeconds(30), CancellationToken.None));
        Assert.Equal(StatusCode.FailedPrecondition, elsewhere.StatusCode);
        Assert.Contains("not the caller's address 127.0.0.1", elsewhere.Status.Detail);

        // The caller's own IP, where nothing listens: dialed, and the failure is named.
        using var probe = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        probe.Start();
        int port = ((System.Net.IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        var (closed, reason) = await rpc.DialBackAsync(peer, $"127.0.0.1:{port}", TimeSpan.FromSeconds(30), CancellationToken.None);
        Assert.False(closed);
        Assert.Equal("no Info answer (Unavailable)", reason);

        // Another node at the caller's IP (this one): TLS is pinned to the caller's id, so it does not count as reachable.
        var (dhtOnly, other) = await rpc.DialBackAsync(peer, node.Address, TimeSpan.FromSeconds(30), CancellationToken.None);
        Assert.False(dhtOnly);
        Assert.Equal("another node answers there", other);

        // Three answered so far; the burst is five, refilled at one a second: a flood is refused with the reason.
        var flood = await Record.ExceptionAsync(async () =>
        {
            for (int i = 0; i < 20; i++) await rpc.DialBackAsync(peer, $"127.0.0.1:{port}", TimeSpan.FromSeconds(30), CancellationToken.None);
        });
        var refused = Assert.IsType<RpcException>(flood);
        Assert.Equal(StatusCode.ResourceExhausted, refused.StatusCode);
        Assert.Contains("dial-back quota exceeded", refused.Status.Detail);
    }
}
