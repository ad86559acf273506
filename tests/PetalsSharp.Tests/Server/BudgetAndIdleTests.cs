using Grpc.Core;
using PetalsSharp.Server;
using PetalsSharp.Wire.V1;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Server;

/// <summary>A small cache refuses what does not fit, keeps existing sessions going and gets its room back.</summary>
public sealed class BudgetTests(SmallCacheFixture f) : IClassFixture<SmallCacheFixture>
{
    [Fact]
    public async Task A_session_that_does_not_fit_is_refused_while_others_continue_and_room_returns()
    {
        Assert.Equal(64, (await f.Client.Raw.InfoAsync(new InfoRequest())).CacheTokensLeft);
        using var first = await f.Client.OpenAsync(ServerClient.Open(1, 48, id: "big"));
        Assert.Equal(16, first.Opened.CacheTokensLeft);
        Assert.Equal(16, (await f.Client.Raw.InfoAsync(new InfoRequest())).CacheTokensLeft);

        var refused = await Assert.ThrowsAsync<RpcException>(() => f.Client.OpenAsync(ServerClient.Open(1, 32, id: "too-big")));
        Assert.Equal(StatusCode.ResourceExhausted, refused.StatusCode);
        Assert.Contains("cache full", refused.Status.Detail);
        Assert.Contains("max_length 32", refused.Status.Detail);

        // A session over one block costs a third: 1 × 32 × 1 = 32 slots fit in the 48 left.
        using (var small = await f.Client.OpenAsync(ServerClient.Open(1, 32, start: 2, end: 3, id: "one-block")))
        {
            Assert.Equal(5, small.Opened.CacheTokensLeft);   // (192 - 144 - 32) / 3
            await small.CloseAsync();
        }

        var (_, position) = await first.StepAsync(randn(1, 5, 64));
        Assert.Equal(5, position);
        await first.CloseAsync();
        await Eventually.TrueAsync(() => f.Server.CacheTokensLeft == 64 && f.Server.ActiveSessions == 0);
        Assert.Equal(64, (await f.Client.Raw.InfoAsync(new InfoRequest())).CacheTokensLeft);
        using var again = await f.Client.OpenAsync(ServerClient.Open(1, 64, id: "all"));
        Assert.Equal(0, again.Opened.CacheTokensLeft);
        again.Call.Dispose();   // a client that vanishes (cancel) also gives its room back
        await Eventually.TrueAsync(() => f.Server.CacheTokensLeft == 64 && f.Server.ActiveSessions == 0);
    }

    [Fact]
    public void Budget_counts_block_token_slots()
    {
        var budget = new CacheBudget(100, 4);
        Assert.Equal(400, budget.TotalSlots);
        using (var lease = budget.Allocate(2, 30, 4))
        {
            Assert.Equal(240, lease.Slots);
            Assert.Equal(40, budget.CacheTokensLeft);
            var e = Assert.Throws<RpcException>(() => budget.Allocate(1, 41, 4));
            Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
            using var partial = budget.Allocate(1, 80, 2);
            Assert.Equal(0, budget.CacheTokensLeft);
            lease.Dispose();   // twice is harmless
        }
        Assert.Equal(0, budget.UsedSlots);
    }
}

/// <summary>A session that goes quiet ends with DEADLINE_EXCEEDED and frees its cache.</summary>
public sealed class IdleTimeoutTests
{
    [Fact]
    public async Task An_idle_session_is_closed_and_its_cache_freed()
    {
        await using var server = BlockServer.Load(new ServerOptions
        {
            ModelDir = TestData.Path("llama-gqa"), StartBlock = 0, EndBlock = 3, Host = "127.0.0.1", Port = 0,
            CacheTokens = 100, SessionIdleTimeout = TimeSpan.FromSeconds(1),
        });
        await server.StartAsync();
        using var client = new ServerClient(server.Address);
        using var session = await client.OpenAsync(ServerClient.Open(1, 40, id: "sleepy"));
        Assert.Equal(60, session.Opened.CacheTokensLeft);
        await session.StepAsync(randn(1, 2, 64));   // a step resets the idle clock
        var e = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            while (await session.Call.ResponseStream.MoveNext(CancellationToken.None)) { }
        });
        Assert.Equal(StatusCode.DeadlineExceeded, e.StatusCode);
        Assert.Contains("idle", e.Status.Detail);
        await Eventually.TrueAsync(() => server.CacheTokensLeft == 100 && server.ActiveSessions == 0);
    }

    [Fact]
    public async Task Stopping_the_server_ends_open_sessions()
    {
        var server = BlockServer.Load(new ServerOptions
        {
            ModelDir = TestData.Path("llama-gqa"), StartBlock = 0, EndBlock = 3, Host = "127.0.0.1", Port = 0,
        });
        await server.StartAsync();
        using var client = new ServerClient(server.Address);
        using var session = await client.OpenAsync(ServerClient.Open(1, 40, id: "interrupted"));
        Assert.Equal(1, server.ActiveSessions);
        await server.StopAsync();
        Assert.Equal(0, server.ActiveSessions);
        Assert.Equal(ServerOptions.DefaultCacheTokens, server.CacheTokensLeft);
        await Assert.ThrowsAsync<RpcException>(async () =>
        {
            while (await session.Call.ResponseStream.MoveNext(CancellationToken.None)) { }
        });
        await server.DisposeAsync();
    }
}
