using System.Net;
using Grpc.Core;
using PetalsSharp.Server;
using Xunit;

namespace PetalsSharp.Tests.Server;

/// <summary>The per-client share of a <see cref="CacheBudget"/> and how callers are told apart, without sockets.</summary>
public sealed class ClientShareUnitTests
{
    [Fact]
    public void One_client_holds_at_most_its_share_and_gets_it_back()
    {
        var budget = new CacheBudget(100, 2, maxClientShare: 0.5);                   // 200 slots, 100 per client
        Assert.Equal(100, budget.MaxClientPromise);
        var e = Assert.Throws<RpcException>(() => budget.Open(1, 51, 2, "1.2.3.4"));   // 4 pages × 2 blocks = 128 slots
        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
        Assert.Contains("client 1.2.3.4 already holds 0", e.Status.Detail);
        Assert.Contains("max_cache_share 0.5", e.Status.Detail);

        var first = budget.Open(1, 32, 2, "1.2.3.4");                               // 64
        using var second = budget.Open(1, 16, 2, "1.2.3.4");                        // 32 more
        Assert.Equal(96, budget.PromisedTo("1.2.3.4"));
        Assert.Equal(0, budget.HeldSlots);                                          // promises are not memory
        Assert.Throws<RpcException>(() => budget.Open(1, 1, 1, "1.2.3.4"));
        using var other = budget.Open(1, 48, 2, "5.6.7.8");                         // 192 promised in all
        Assert.Equal(4, budget.CacheTokensLeft);
        var full = Assert.Throws<RpcException>(() => budget.Open(1, 1, 1, "9.9.9.9"));
        Assert.Contains("cache full", full.Status.Detail);

        first.Dispose();
        first.Dispose();   // twice is harmless
        Assert.Equal(32, budget.PromisedTo("1.2.3.4"));
        using var again = budget.Open(1, 32, 2, "1.2.3.4");
    }

    [Theory]
    [InlineData("ipv4:127.0.0.2:41234", "127.0.0.2")]
    [InlineData("ipv6:[::ffff:10.0.0.7]:80", "10.0.0.7")]
    [InlineData("ipv6:[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:5000", "2001:db8:1:2::/64")]
    [InlineData("ipv6:[::1]:5000", "::/64")]
    [InlineData("unix:/tmp/socket", ClientKey.Unknown)]
    [InlineData("ipv4:not-an-address:1", ClientKey.Unknown)]
    [InlineData("", ClientKey.Unknown)]
    [InlineData(null, ClientKey.Unknown)]
    public void Callers_are_keyed_by_address_not_connection(string? peer, string key) =>
        Assert.Equal(key, ClientKey.FromPeer(peer));

    [Fact]
    public void Two_hosts_of_one_ipv6_network_are_one_client() =>
        Assert.Equal(ClientKey.Of(IPAddress.Parse("2001:db8::1")), ClientKey.Of(IPAddress.Parse("2001:db8::ffff:2")));
}
