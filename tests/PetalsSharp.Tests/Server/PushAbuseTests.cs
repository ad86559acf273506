using System.Net;
using System.Net.Sockets;
using Grpc.Core;
using PetalsSharp.Dht;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Swarm;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using Xunit;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace PetalsSharp.Tests.Server;

/// <summary>
/// A DHT bootstrap node in this process and two server processes over llama-gqa that joined it: A serves [0:1],
/// B serves [1:3]. Each announces itself, so each is the only legitimate push target for the other's end block.
/// </summary>
public sealed class PushSwarm : IAsyncLifetime
{
    public static readonly string ModelDir = TestData.Path("llama-gqa");
    public DhtNode Bootstrap { get; private set; } = null!;
    public ServerProcess A { get; private set; } = null!;
    public ServerProcess B { get; private set; } = null!;
    public ServerClient ClientA { get; private set; } = null!;
    public ServerClient ClientB { get; private set; } = null!;
    Checkpoint _checkpoint = null!;
    public LocalBlockStack Tail { get; private set; } = null!;   // blocks [1:3], to check B's outputs

    public async Task InitializeAsync()
    {
        Bootstrap = await DhtNode.StartAsync(new DhtNodeOptions { Host = "127.0.0.1", Port = 0 });
        string[] swarm = ["--initial-peers", Bootstrap.PeerAddress, "--update-period", "1", "--throughput", "100"];
        var started = await Task.WhenAll(ServerProcess.StartAsync(ModelDir, 0, 1, swarm), ServerProcess.StartAsync(ModelDir, 1, 3, swarm));
        (A, B) = (started[0], started[1]);
        var prefix = ModelNames.DhtPrefix(ModelNames.FromFolder(ModelDir));
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while ((await SwarmReader.ReadAsync(Bootstrap, prefix, 3)).Online.Count < 2)
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"servers not ONLINE:\n{A.Log}\n{B.Log}");
            await Task.Delay(200);
        }
        ClientA = new ServerClient(A.Address);
        ClientB = new ServerClient(B.Address);
        _checkpoint = Checkpoint.Open(ModelDir);
        Tail = _checkpoint.LoadBlocks(1, 3);
    }

    public async Task DisposeAsync()
    {
        ClientA?.Dispose();
        ClientB?.Dispose();
        A?.Dispose();
        B?.Dispose();
        Tail?.Dispose();
        _checkpoint?.Dispose();
        if (Bootstrap is not null) await Bootstrap.DisposeAsync();
    }
}

/// <summary>
/// Issue 23, attacks 3 and 8: a client may not make a server dial addresses nobody announced, nor loop a step back
/// into its own session; and nobody but the session's predecessor may push into it.
/// </summary>
[Trait("Category", "Processes")]
public sealed class PushAbuseTests(PushSwarm swarm, Xunit.Abstractions.ITestOutputHelper output) : IClassFixture<PushSwarm>
{
    static string NewId() => Guid.NewGuid().ToString("N");

    static (int Threads, int Fds) Resources(ServerProcess p)
    {
        var threads = File.ReadLines($"/proc/{p.ProcessId}/status").First(l => l.StartsWith("Threads:", StringComparison.Ordinal));
        return (int.Parse(threads["Threads:".Length..].Trim()), Directory.GetFiles($"/proc/{p.ProcessId}/fd").Length);
    }

    static InferenceStep EmptyStep(string id)
    {
        using var empty = zeros(1, 0, 64);
        return InferenceStream.Step(id, empty);
    }

    [SkippableFact]
    public async Task Steps_naming_unannounced_next_servers_are_not_dialed_and_cost_no_threads_or_files()
    {
        Skip.IfNot(OperatingSystem.IsLinux(), "reads /proc");
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int dialed = 0;
        _ = Task.Run(async () =>
        {
            try
            {
                while (true)
                {
                    (await listener.AcceptSocketAsync()).Dispose();
                    Interlocked.Increment(ref dialed);
                }
            }
            catch (Exception) { /* stopped */ }
        });
        string trap = $"127.0.0.1:{((IPEndPoint)listener.LocalEndpoint).Port}";

        using var session = await swarm.ClientA.OpenAsync(ServerClient.Open(1, 16, 0, 1, NewId()));
        for (int i = 0; i < 20; i++) await session.SendAsync(EmptyStep(NewId()));   // warm up the stream
        var before = Resources(swarm.A);
        for (int i = 0; i < 300; i++)
        {
            var step = EmptyStep(NewId());
            var address = i % 10 == 0 ? trap : $"h{i}-{Guid.NewGuid():N}.invalid:{1000 + i}";
            step.NextServers.Add(new NextServer { Address = address, SessionId = NewId(), StepId = NewId() });
            var reply = await session.SendAsync(step);
            Assert.Equal(step.StepId, reply.StepId);
        }
        // Whatever the server might still be doing in the background has had time to show.
        await Task.Delay(TimeSpan.FromSeconds(3));
        var after = Resources(swarm.A);
        output.WriteLine($"threads {before.Threads} -> {after.Threads}, fds {before.Fds} -> {after.Fds}, trap dialed {dialed} times");
        Assert.Equal(0, Volatile.Read(ref dialed));
        Assert.True(after.Threads <= before.Threads + 16, $"threads {before.Threads} -> {after.Threads}");
        Assert.True(after.Fds <= before.Fds + 16, $"fds {before.Fds} -> {after.Fds}");
    }

    [Fact]
    public async Task Sixteen_next_servers_looping_back_into_the_session_are_refused()
    {
        var id = NewId();
        using var session = await swarm.ClientA.OpenAsync(ServerClient.Open(1, 16, 0, 1, id));
        using var x = randn(1, 1, 64, generator: new Generator(5));
        var step = InferenceStream.Step(NewId(), x);
        for (int i = 0; i < 16; i++) step.NextServers.Add(new NextServer { Address = swarm.A.Address, SessionId = id, StepId = NewId() });
        var e = await Assert.ThrowsAsync<RpcException>(() => session.SendAsync(step));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("next_servers", e.Status.Detail);
    }

    [Fact]
    public async Task A_next_server_pointing_back_at_this_server_gets_no_push_and_the_step_runs_once()
    {
        var id = NewId();
        using var session = await swarm.ClientA.OpenAsync(ServerClient.Open(1, 16, 0, 1, id));
        using var x = randn(1, 1, 64, generator: new Generator(6));
        var looped = InferenceStream.Step(NewId(), x);
        looped.NextServers.Add(new NextServer { Address = swarm.A.Address, SessionId = id, StepId = NewId() });
        var first = await session.SendAsync(looped);
        Assert.Equal(looped.StepId, first.StepId);
        Assert.Contains("open on this server", first.PushRefused);
        // Had the step been pushed back, its second run would be the next reply on this stream.
        var next = InferenceStream.Step(NewId(), x);
        var second = await session.SendAsync(next);
        Assert.Equal(next.StepId, second.StepId);
        Assert.Equal(2, second.Position);
    }

    [Fact]
    public async Task Pushes_reach_an_announced_next_server_only_with_its_sessions_token()
    {
        var tokenB = NewId();
        using var a = await swarm.ClientA.OpenAsync(ServerClient.Open(1, 16, 0, 1, NewId()));
        var openB = ServerClient.Open(1, 16, 1, 3, NewId());
        openB.PushToken = tokenB;
        using var b = await swarm.ClientB.OpenAsync(openB);
        using var x = randn(1, 2, 64, generator: new Generator(9));

        var wrong = InferenceStream.Step(NewId(), x);
        wrong.NextServers.Add(new NextServer { Address = swarm.B.Address, SessionId = openB.SessionId, StepId = NewId(), PushToken = NewId() });
        var wrongReply = await a.SendAsync(wrong);
        Assert.Equal("", wrongReply.PushRefused);   // A pushes; B refuses the token (A logs it), and b stays at position 0

        var step = InferenceStream.Step(NewId(), x, startFrom: 0);
        var pushedId = NewId();
        step.NextServers.Add(new NextServer { Address = swarm.B.Address, SessionId = openB.SessionId, StepId = pushedId, PushToken = tokenB });
        var fromA = await a.SendAsync(step);
        Assert.Equal("", fromA.PushRefused);
        Assert.True(await b.Call.ResponseStream.MoveNext(CancellationToken.None));
        var fromB = b.Call.ResponseStream.Current.Result;
        Assert.Equal(pushedId, fromB.StepId);
        Assert.Equal(2, fromB.Position);
        using var noGrad = no_grad();
        using var hiddenA = TensorCodec.Decode(fromA.Hidden, "a");
        TensorAssert.Close(swarm.Tail.Forward(hiddenA), TensorCodec.Decode(fromB.Hidden, "b"), 1e-4, 1e-4, "pushed output");
    }

    [Fact]
    public async Task A_third_party_that_knows_a_session_id_cannot_push_into_it()
    {
        var id = NewId();
        var open = ServerClient.Open(1, 16, 1, 3, id);
        open.PushToken = NewId();   // given only to the server before B in the victim's chain
        using var victim = await swarm.ClientB.OpenAsync(open);
        using var junk = randn(1, 4, 64, generator: new Generator(7));
        foreach (var guess in new[] { "", NewId() })
        {
            var forged = new PushRequest { SessionId = id, Step = InferenceStream.Step(NewId(), junk), PushToken = guess };
            var e = await Assert.ThrowsAsync<RpcException>(async () => await swarm.ClientB.Raw.PushAsync(forged));
            Assert.Equal(StatusCode.PermissionDenied, e.StatusCode);
        }

        using var x = randn(1, 3, 64, generator: new Generator(8));
        var (hidden, position) = await victim.StepAsync(x);
        Assert.Equal(3, position);
        // Grad mode is per thread: a no_grad still open across an await would be left behind on this pool thread.
        using (no_grad()) TensorAssert.Close(swarm.Tail.Forward(x), hidden, 1e-4, 1e-4, "the victim's output");
        await victim.CloseAsync();
        Assert.DoesNotContain(id, swarm.B.Log);
    }
    [Fact]
    public async Task A_push_stream_answers_a_refused_push_and_still_delivers_the_next()
    {
        var id = NewId();
        var open = ServerClient.Open(1, 16, 1, 3, id);
        open.PushToken = NewId();
        using var session = await swarm.ClientB.OpenAsync(open);
        using var lane = swarm.ClientB.Raw.PushStream();
        await lane.ResponseHeadersAsync;   // the server accepts the stream before any push
        using var x = randn(1, 2, 64, generator: new Generator(10));

        await lane.RequestStream.WriteAsync(new PushRequest { SessionId = id, Step = InferenceStream.Step(NewId(), x), PushToken = NewId() });
        Assert.True(await lane.ResponseStream.MoveNext(CancellationToken.None));
        Assert.Equal(id, lane.ResponseStream.Current.SessionId);
        Assert.StartsWith("PermissionDenied", lane.ResponseStream.Current.Error);

        var stepId = NewId();
        await lane.RequestStream.WriteAsync(new PushRequest { SessionId = id, Step = InferenceStream.Step(stepId, x), PushToken = open.PushToken });
        Assert.True(await session.Call.ResponseStream.MoveNext(CancellationToken.None));
        var result = session.Call.ResponseStream.Current.Result;
        Assert.Equal(stepId, result.StepId);
        Assert.Equal(2, result.Position);
        using (no_grad()) TensorAssert.Close(swarm.Tail.Forward(x), TensorCodec.Decode(result.Hidden, "b"), 1e-4, 1e-4, "output of the pushed step");
        await lane.RequestStream.CompleteAsync();
    }
}
