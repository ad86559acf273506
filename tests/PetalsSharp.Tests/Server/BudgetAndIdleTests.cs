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
    public async Task Sessions_take_pages_as_they_grow_and_a_step_that_does_not_fit_is_busy_while_others_continue()
    {
        var span = f.Server.Current!;
        Assert.Equal(64, (await f.Client.Raw.InfoAsync(new InfoRequest())).CacheTokensLeft);   // 3 blocks × 64 = 192 slots
        var never = await Assert.ThrowsAsync<RpcException>(() => f.Client.OpenAsync(ServerClient.Open(1, 80, id: "never")));
        Assert.Equal(StatusCode.ResourceExhausted, never.StatusCode);
        Assert.Contains("max_length 80", never.Status.Detail);
        Assert.Null(never.Trailers.GetValue(Protocol.RetryPushbackTrailer));   // nothing to wait for here

        using var first = await f.Client.OpenAsync(ServerClient.Open(1, 64, id: "big"));
        Assert.Equal(64, first.Opened.CacheTokensLeft);                        // opening takes no pages
        await first.StepAsync(randn(1, 40, 64));                               // 3 pages of each block
        Assert.Equal(16, f.Server.CacheTokensLeft);

        using var second = await f.Client.OpenAsync(ServerClient.Open(1, 64, id: "second"));
        var busy = await Assert.ThrowsAsync<RpcException>(() => second.StepAsync(randn(1, 20, 64)));   // 2 pages each, 1 free
        Assert.Equal(StatusCode.ResourceExhausted, busy.StatusCode);
        Assert.Contains("cache full", busy.Status.Detail);
        Assert.NotNull(busy.Trailers.GetValue(Protocol.RetryPushbackTrailer));

        var (_, position) = await first.StepAsync(randn(1, 5, 64));            // within its pages: goes on
        Assert.Equal(45, position);
        Assert.True(span.Stack.Pages.AllocatedBytes <= span.CacheBudget.TotalPages * span.Stack.Pages.PageBytes,
            $"{span.Stack.Pages.AllocatedBytes} bytes of pages for a budget of {span.CacheBudget.TotalPages} pages");
        await first.CloseAsync();
        await Eventually.TrueAsync(() => f.Server.CacheTokensLeft == 64 && f.Server.ActiveSessions == 0);
        Assert.Equal(0, span.Stack.Pages.PagesInUse);

        using var again = await f.Client.OpenAsync(ServerClient.Open(1, 64, id: "all"));
        await again.StepAsync(randn(1, 64, 64));
        Assert.Equal(0, f.Server.CacheTokensLeft);
        again.Call.Dispose();   // a client that vanishes (cancel) also gives its room back
        await Eventually.TrueAsync(() => f.Server.CacheTokensLeft == 64 && f.Server.ActiveSessions == 0);
    }

    [Fact]
    public void Budget_counts_block_token_slots_of_whole_pages()
    {
        var budget = new CacheBudget(100, 4);
        Assert.Equal(400, budget.TotalSlots);
        Assert.Equal(25, budget.TotalPages);
        using (var lease = budget.Open(2, 30, 4))
        {
            Assert.Equal(0, lease.Slots);
            lease.Take(2 * 4 * 2);                                             // 2 rows × 4 blocks × 2 pages
            Assert.Equal(256, lease.Slots);
            Assert.Equal(36, budget.CacheTokensLeft);                          // (400 - 256) / 4
            lease.Give(8);                                                     // a rollback past a page boundary
            Assert.Equal(128, lease.Slots);
            var e = Assert.Throws<RpcException>(() => budget.Open(1, 101, 4)); // 7 pages × 16 × 4 = 448 > 400
            Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
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
        Assert.Equal(100, session.Opened.CacheTokensLeft);   // opening takes no pages
        await session.StepAsync(randn(1, 2, 64));   // a step resets the idle clock (and takes a page of each block)
        Assert.Equal(100 - 16, server.CacheTokensLeft);
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
