using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using PetalsSharp.Dht;
using Xunit;

namespace PetalsSharp.Tests.Dht;

/// <summary>
/// Joining retries unreachable initial peers (a peer still starting, a loaded machine) and gives up only after the
/// join timeout, while a peer that refuses us fails the join at once.
/// </summary>
[Collection(DhtSocketsCollection.Name)]
public sealed class DhtJoinRetryTests
{
    const string Retrying = "could not join the DHT yet";

    [Fact]
    public async Task A_join_waits_for_an_initial_peer_that_starts_later()
    {
        int port = FreePort();
        using var identity = NodeIdentity.CreateEphemeral();
        var log = new RecordingLogger();
        // A budget far beyond what the test needs: a loaded machine must not make the join give up.
        await using var joiner = await DhtNode.StartAsync(DhtTestSwarm.Options() with { Logger = log, JoinTimeout = TimeSpan.FromMinutes(10) });

        var join = joiner.BootstrapAsync([$"127.0.0.1:{port}/{identity.Id}"]);
        await log.WaitForAsync(Retrying);
        Assert.False(join.IsCompleted);   // nobody listens yet: the join is waiting, not failed

        await using var peer = await DhtNode.StartAsync(DhtTestSwarm.Options() with { Port = port, Identity = identity });
        await join;
        Assert.NotNull(joiner.Table.Find(identity.Id));
        Assert.Contains(log.Messages, m => m.Contains(Retrying) && m.Contains("Unavailable"));
    }

    [Fact]
    public async Task After_the_join_timeout_the_error_names_the_unreachable_peer()
    {
        int port = FreePort();
        await using var joiner = await DhtNode.StartAsync(DhtTestSwarm.Options() with { JoinTimeout = TimeSpan.FromSeconds(1) });
        var e = await Assert.ThrowsAsync<DhtException>(() => joiner.BootstrapAsync([$"127.0.0.1:{port}"]));
        Assert.StartsWith("could not join the DHT: no initial peer answered (", e.Message);
        Assert.Contains($"127.0.0.1:{port}: Unavailable", e.Message);
    }

    [Fact]
    public async Task A_peer_that_refuses_is_not_retried()
    {
        await using var swarm = new DhtTestSwarm();
        var member = await swarm.AddAsync(DhtTestSwarm.Options(SwarmKey.Generate()));
        var log = new RecordingLogger();
        await using var outsider = await DhtNode.StartAsync(DhtTestSwarm.Options() with { Logger = log, JoinTimeout = TimeSpan.FromMinutes(10) });
        var e = await Assert.ThrowsAsync<DhtException>(() => outsider.BootstrapAsync([member.PeerAddress]));
        Assert.Contains("PermissionDenied", e.Message);
        Assert.DoesNotContain(log.Messages, m => m.Contains(Retrying));
    }

    [Fact]
    public void A_negative_join_timeout_is_refused() =>
        Assert.Throws<ArgumentException>(() => (DhtTestSwarm.Options() with { JoinTimeout = TimeSpan.FromSeconds(-1) }).Validate());

    static int FreePort()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }

    sealed class RecordingLogger : ILogger
    {
        readonly ConcurrentQueue<string> _messages = new();
        readonly SemaphoreSlim _logged = new(0);

        public IEnumerable<string> Messages => _messages;

        public async Task WaitForAsync(string text)
        {
            while (!_messages.Any(m => m.Contains(text))) await _logged.WaitAsync();
        }

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            _messages.Enqueue(formatter(state, exception));
            _logged.Release();
        }
    }
}
