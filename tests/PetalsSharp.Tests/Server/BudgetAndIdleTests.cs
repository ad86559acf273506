using Grpc.Core;
using PetalsSharp.Server;
using PetalsSharp.Wire;
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
        var span = f.Server.Current!;
        Assert.Equal(64, (await f.Client.Raw.InfoAsync(new InfoRequest())).CacheTokensLeft);   // 3 blocks × 64 = 192 slots
        var never = await Assert.ThrowsAsync<RpcException>(() => f.Client.OpenAsync(ServerClient.Open(1, 80, id: "never")));
        Assert.Equal(StatusCode.ResourceExhausted, never.StatusCode);
        Assert.Null(never.Trailers.GetValue(Protocol.RetryPushbackTrailer));   // nothing to wait for here

        using var first = await f.Client.OpenAsync(ServerClient.Open(1, 48, id: "big"));
        Assert.Equal(16, first.Opened.CacheTokensLeft);                        // promised: three pages of each block
        Assert.Equal(0, span.CacheBudget.HeldSlots);                            // held: nothing yet

        var refused = await Assert.ThrowsAsync<RpcException>(() => f.Client.OpenAsync(ServerClient.Open(1, 32, id: "too-big")));
        Assert.Equal(StatusCode.ResourceExhausted, refused.StatusCode);
        Assert.Contains("cache full", refused.Status.Detail);
        Assert.Contains("max_length 32", refused.Status.Detail);
        Assert.NotNull(refused.Trailers.GetValue(Protocol.RetryPushbackTrailer));

        // A session over one block costs a third: 1 × 32 × 1 = 32 slots fit in the 48 left.
        using (var small = await f.Client.OpenAsync(ServerClient.Open(1, 32, start: 2, end: 3, id: "one-block")))
        {
            Assert.Equal(5, small.Opened.CacheTokensLeft);   // (192 - 144 - 32) / 3
            await small.CloseAsync();
        }

        var (_, position) = await first.StepAsync(randn(1, 5, 64));
        Assert.Equal(5, position);
        Assert.Equal(3 * 16, span.CacheBudget.HeldSlots);                       // memory follows the tokens: one page a block
        await first.StepAsync(randn(1, 20, 64));
        Assert.Equal(3 * 32, span.CacheBudget.HeldSlots);
        Assert.Equal(3 * 2, span.Stack.Pages.PagesInUse);
        Assert.True(span.Stack.Pages.PeakBytes <= span.CacheBudget.TotalPages * span.Stack.Pages.PageBytes,
            $"{span.Stack.Pages.PeakBytes} bytes of pages at most for a budget of {span.CacheBudget.TotalPages} pages");
        await first.CloseAsync();
        await Eventually.TrueAsync(() => f.Server.CacheTokensLeft == 64 && f.Server.ActiveSessions == 0);
        Assert.Equal((0L, 0L), (span.CacheBudget.HeldSlots, span.Stack.Pages.PagesInUse));
        await Eventually.TrueAsync(() => span.Stack.Pages.AllocatedBytes == 0);   // an idle server frees the pages
        Assert.Equal(64, (await f.Client.Raw.InfoAsync(new InfoRequest())).CacheTokensLeft);
        using var again = await f.Client.OpenAsync(ServerClient.Open(1, 64, id: "all"));
        Assert.Equal(0, again.Opened.CacheTokensLeft);
        again.Call.Dispose();   // a client that vanishes (cancel) also gives its room back
        await Eventually.TrueAsync(() => f.Server.CacheTokensLeft == 64 && f.Server.ActiveSessions == 0);
    }

    [Fact]
    public void Budget_promises_whole_pages_at_open_and_counts_memory_as_pages_are_taken()
    {
        var budget = new CacheBudget(100, 4);                                   // 400 slots
        Assert.Equal((400L, 25L), (budget.TotalSlots, budget.TotalPages));
        using (var lease = budget.Open(2, 30, 4))                               // 2 rows × 4 blocks × 2 pages
        {
            Assert.Equal((256L, 0L), (lease.Promise, lease.Slots));
            Assert.Equal(36, budget.CacheTokensLeft);                           // (400 - 256) / 4
            lease.Take(8);                                                      // the first page of each row and block
            Assert.Equal(128, budget.HeldSlots);
            Assert.Throws<InvalidOperationException>(() => lease.Take(9));     // past its promise: a bug, not load
            lease.Give(8);                                                      // a rollback past a page boundary
            Assert.Equal(0, budget.HeldSlots);
            var e = Assert.Throws<RpcException>(() => budget.Open(1, 41, 4));   // 3 pages × 16 × 4 = 192 > 144
            Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
            using var partial = budget.Open(1, 64, 2);                          // 128 of the 144
            Assert.Equal(4, budget.CacheTokensLeft);
            lease.Dispose();   // twice is harmless
        }
        Assert.Equal((0L, 0L), (budget.PromisedSlots, budget.HeldSlots));
    }

    [Fact]
    public void Overcommit_admits_more_sessions_and_a_step_past_the_memory_is_busy()
    {
        var budget = new CacheBudget(64, 1, overcommit: 2);                     // 64 slots of memory, 128 promisable
        using var a = budget.Open(1, 64, 1);
        using var b = budget.Open(1, 64, 1);
        Assert.Throws<RpcException>(() => budget.Open(1, 16, 1));              // every promise given
        a.Take(3);
        b.Take(1);                                                              // all 64 slots held
        var busy = Assert.Throws<RpcException>(() => b.Take(1));
        Assert.Equal(StatusCode.ResourceExhausted, busy.StatusCode);
        Assert.NotNull(busy.Trailers.GetValue(Protocol.RetryPushbackTrailer));
        Assert.Contains("--cache-overcommit", busy.Status.Detail);
        a.Give(1);
        b.Take(1);
        Assert.Equal(64, budget.HeldSlots);
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
        Assert.Equal(100 - 48, session.Opened.CacheTokensLeft);   // max_length 40 is promised as three pages
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
