using System.Net;
using System.Net.Sockets;
using Grpc.Core;
using PetalsSharp.Relay;
using PetalsSharp.Relay.V1;
using Xunit;

namespace PetalsSharp.Tests.Nat;

/// <summary>A relay's limits and its answers to hostile calls, against an in-process relay over real sockets.</summary>
public sealed class RelayHubTests
{
    static Task<InProcessRelay> StartAsync(RelayOptions options) => InProcessRelay.StartAsync(options);

    static RelayService.RelayServiceClient Client(Grpc.Net.Client.GrpcChannel channel) => new(channel);

    static readonly string ServerId = new('b', 40);

    static async Task<(AsyncDuplexStreamingCall<RegisterRequest, RegisterReply> Call, Registered Registered)> RegisterAsync(RelayService.RelayServiceClient client)
    {
        var call = client.Register(deadline: DateTime.UtcNow.AddMinutes(5));
        await call.RequestStream.WriteAsync(new RegisterRequest { NodeId = ServerId });
        Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None));
        return (call, call.ResponseStream.Current.Registered);
    }

    static async Task WaitAsync(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"timed out waiting for {what}");
            await Task.Delay(20);
        }
    }

    [Fact]
    public async Task Registrations_past_the_limit_get_RESOURCE_EXHAUSTED_and_a_freed_slot_is_taken_again()
    {
        await using var relay = await StartAsync(new RelayOptions { MaxServers = 1 });
        using var channel = TestChannels.Create(relay.Node.Address);
        var client = Client(channel);
        var (first, registered) = await RegisterAsync(client);
        Assert.StartsWith("127.0.0.1:", registered.Address);
        Assert.Equal(relay.Node.Id.ToString(), registered.RelayId);
        using (var second = client.Register())
        {
            await second.RequestStream.WriteAsync(new RegisterRequest { NodeId = ServerId });
            var e = await Assert.ThrowsAsync<RpcException>(() => second.ResponseStream.MoveNext(CancellationToken.None));
            Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
            Assert.Contains("maximum of 1 servers", e.Status.Detail);
        }
        first.Dispose();   // the server left: its port closes and its slot frees
        await WaitAsync(() => relay.Hub.Servers == 0, "the registration to end");
        var (again, _) = await RegisterAsync(client);
        again.Dispose();
    }

    [Fact]
    public async Task A_bad_node_id_and_an_unknown_connection_get_clear_statuses()
    {
        await using var relay = await StartAsync(new RelayOptions());
        using var channel = TestChannels.Create(relay.Node.Address);
        var client = Client(channel);
        using var register = client.Register();
        await register.RequestStream.WriteAsync(new RegisterRequest { NodeId = "not-an-id" });
        var bad = await Assert.ThrowsAsync<RpcException>(() => register.ResponseStream.MoveNext(CancellationToken.None));
        Assert.Equal(StatusCode.InvalidArgument, bad.StatusCode);
        using var tunnel = client.Tunnel();
        await tunnel.RequestStream.WriteAsync(new TunnelChunk { ConnectionId = 12345 });
        var unknown = await Assert.ThrowsAsync<RpcException>(() => tunnel.ResponseStream.MoveNext(CancellationToken.None));
        Assert.Equal(StatusCode.NotFound, unknown.StatusCode);
        // The relay is unharmed.
        var (ok, _) = await RegisterAsync(client);
        ok.Dispose();
    }

    [Fact]
    public async Task Connections_past_the_per_server_limit_and_connections_never_taken_are_closed()
    {
        await using var relay = await StartAsync(new RelayOptions { MaxConnectionsPerServer = 1, TunnelTimeout = TimeSpan.FromSeconds(1) });
        using var channel = TestChannels.Create(relay.Node.Address);
        var (call, registered) = await RegisterAsync(Client(channel));
        using var _ = call;
        var port = int.Parse(registered.Address[(registered.Address.LastIndexOf(':') + 1)..]);
        using var kept = new TcpClient();
        await kept.ConnectAsync(IPAddress.Loopback, port);
        Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None));
        Assert.NotEqual(0UL, call.ResponseStream.Current.Incoming.ConnectionId);
        // The server never calls Tunnel: the relay closes the connection after its timeout (read returns 0 or resets).
        Assert.Equal(0, await ReadOrResetAsync(kept));
        // Its slot came back: a new connection is offered, and one past the limit is closed at once.
        using var next = new TcpClient();
        await next.ConnectAsync(IPAddress.Loopback, port);
        Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None));
        using var over = new TcpClient();
        await over.ConnectAsync(IPAddress.Loopback, port);
        Assert.Equal(0, await ReadOrResetAsync(over));
    }

    [Fact]
    public async Task A_tunnel_ends_with_its_registration_so_a_server_cannot_keep_connections_past_it()
    {
        await using var relay = await StartAsync(new RelayOptions());
        using var channel = TestChannels.Create(relay.Node.Address);
        var client = Client(channel);
        var (call, registered) = await RegisterAsync(client);
        var port = int.Parse(registered.Address[(registered.Address.LastIndexOf(':') + 1)..]);
        using var user = new TcpClient();
        await user.ConnectAsync(IPAddress.Loopback, port);
        Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None));
        using var tunnel = client.Tunnel();
        await tunnel.RequestStream.WriteAsync(new TunnelChunk { ConnectionId = call.ResponseStream.Current.Incoming.ConnectionId });
        // Bytes flow through the tunnel...
        await tunnel.RequestStream.WriteAsync(new TunnelChunk { Data = Google.Protobuf.ByteString.CopyFromUtf8("hello") });
        var buffer = new byte[5];
        await user.GetStream().ReadExactlyAsync(buffer);
        Assert.Equal("hello", System.Text.Encoding.ASCII.GetString(buffer));
        // ...until the server's registration ends, though it keeps the Tunnel call open.
        call.Dispose();
        Assert.Equal(0, await ReadOrResetAsync(user));
        await WaitAsync(() => relay.Hub.Servers == 0, "the registration to end");
    }

    static async Task<int> ReadOrResetAsync(TcpClient client)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        try { return await client.GetStream().ReadAsync(new byte[16], timeout.Token); }
        catch (IOException) { return 0; }
    }

    [Fact]
    public async Task The_byte_budget_makes_traffic_past_the_limit_wait()
    {
        var budget = new ByteBudget(100_000);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        await budget.TakeAsync(100_000, CancellationToken.None);   // the full bucket: at once
        await budget.TakeAsync(40_000, CancellationToken.None);    // 0.4 s of refill
        Assert.True(sw.Elapsed >= TimeSpan.FromSeconds(0.3), $"took {sw.Elapsed.TotalSeconds:F2} s");
    }
}
