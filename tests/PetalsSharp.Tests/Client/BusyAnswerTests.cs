using Grpc.Core;
using PetalsSharp.Client;
using PetalsSharp.Server;
using PetalsSharp.Swarm;
using PetalsSharp.Wire;
using Xunit;

namespace PetalsSharp.Tests.Client;

/// <summary>
/// Busy answers (issue 18): a full cache says RESOURCE_EXHAUSTED with a retry hint, a request that can never fit says
/// it without one, and the client routes around a busy server without counting a failure against it.
/// </summary>
public sealed class BusyAnswerTests
{
    static RpcException Refusal(Action allocate) => Assert.Throws<RpcException>(allocate);

    [Fact]
    public void A_full_cache_answers_busy_with_a_retry_hint_and_a_request_that_never_fits_without_one()
    {
        var budget = new CacheBudget(cacheTokens: 100, spanLength: 2);              // 200 slots
        using var lease = budget.Open(1, 80, 2);                                    // 160 promised
        var full = Refusal(() => budget.Open(1, 40, 2));                            // 96 more
        Assert.Equal(StatusCode.ResourceExhausted, full.StatusCode);
        Assert.Equal("1000", full.Trailers.GetValue(Protocol.RetryPushbackTrailer));
        Assert.Equal(TimeSpan.FromSeconds(1), Retries.RetryHint(full));
        Assert.Equal(TimeSpan.FromSeconds(1), Retries.BusyFor(full));

        var never = Refusal(() => budget.Open(1, 101, 2));
        Assert.Equal(StatusCode.ResourceExhausted, never.StatusCode);
        Assert.Null(never.Trailers.GetValue(Protocol.RetryPushbackTrailer));
        Assert.Null(Retries.RetryHint(never));                    // nothing to wait for on this server
        Assert.Equal(Retries.DefaultBusyRetry, Retries.BusyFor(never));   // but route around it
        Assert.Equal(160, budget.PromisedSlots);                  // refusals took nothing
    }

    [Fact]
    public void A_client_share_that_can_never_fit_gives_no_hint_and_one_that_is_only_full_does()
    {
        var budget = new CacheBudget(cacheTokens: 100, spanLength: 1, maxClientShare: 0.5);
        Assert.Null(Retries.RetryHint(Refusal(() => budget.Open(1, 60, 1, "c"))));   // 4 pages: 64 slots > 50
        using var lease = budget.Open(1, 32, 1, "c");
        Assert.NotNull(Retries.RetryHint(Refusal(() => budget.Open(1, 20, 1, "c"))));
    }

    [Theory]
    [InlineData("250", 250)]
    [InlineData("1", 50)]          // clamped to [50 ms, 60 s]
    [InlineData("999999999", 60_000)]
    public void The_hint_is_honoured_within_bounds(string trailer, int expectedMs)
    {
        var e = new RpcException(new Status(StatusCode.ResourceExhausted, "full"), new Metadata { { Protocol.RetryPushbackTrailer, trailer } });
        Assert.Equal(TimeSpan.FromMilliseconds(expectedMs), Retries.RetryHint(e));
    }

    [Theory]
    [InlineData("-5")]
    [InlineData("soon")]
    public void A_malformed_hint_is_no_hint(string trailer)
    {
        var e = new RpcException(new Status(StatusCode.ResourceExhausted, "full"), new Metadata { { Protocol.RetryPushbackTrailer, trailer } });
        Assert.Null(Retries.RetryHint(e));
        Assert.Equal(Retries.DefaultBusyRetry, Retries.BusyFor(e));
    }

    [Fact]
    public void Other_statuses_are_not_busy()
    {
        Assert.Null(Retries.BusyFor(new RpcException(new Status(StatusCode.Unavailable, "down"))));
        Assert.Null(Retries.BusyFor(new IOException("reset")));
    }

    [Fact]
    public void Busy_routes_around_a_peer_for_its_hint_without_adding_to_its_failure_streak()
    {
        var t0 = DateTimeOffset.UnixEpoch;
        var bans = BanList.Empty.Busy("p", t0, TimeSpan.FromSeconds(1));
        Assert.True(bans.IsBanned("p", t0 + TimeSpan.FromMilliseconds(900)));
        Assert.False(bans.IsBanned("p", t0 + TimeSpan.FromSeconds(1)));
        // A real failure afterwards is a first failure: the base ban, not a doubled one.
        var failed = bans.Ban("p", t0 + TimeSpan.FromSeconds(2));
        Assert.Equal(t0 + TimeSpan.FromSeconds(17), failed.BannedUntil("p", t0 + TimeSpan.FromSeconds(2)));
        // Busy never shortens a ban that is running.
        Assert.Same(failed, failed.Busy("p", t0 + TimeSpan.FromSeconds(3), TimeSpan.FromSeconds(1)));
    }
}
