using PetalsSharp.Wire;
using Xunit;

namespace PetalsSharp.Tests.Wire;

/// <summary>The channel cache stays bounded whatever addresses it is asked for, and never frees a channel in use.</summary>
public sealed class PeerChannelsTests
{
    [Fact]
    public void Unique_addresses_beyond_the_cap_evict_the_least_recently_used()
    {
        using var peers = new PeerChannels(new PeerChannelOptions(1 << 20));
        var kept = peers.Get("kept.invalid:1");
        for (int i = 0; i < PeerChannels.MaxChannels + 100; i++)
        {
            peers.Get($"h{i}.invalid:{1000 + i}");
            if (i % 10 == 0) Assert.Same(kept, peers.Get("kept.invalid:1"));   // recently used: never the one evicted
        }
        Assert.Equal(PeerChannels.MaxChannels, peers.Count);
    }

    [Fact]
    public void A_leased_channel_outlives_its_eviction_until_the_lease_ends()
    {
        using var peers = new PeerChannels(new PeerChannelOptions(1 << 20));
        var lease = peers.Rent("leased.invalid:1");
        for (int i = 0; i < PeerChannels.MaxChannels + 10; i++) peers.Get($"h{i}.invalid:{1000 + i}");
        peers.Sweep();
        lease.Channel.CreateCallInvoker();   // throws ObjectDisposedException once disposed
        Assert.NotSame(lease.Channel, peers.Get("leased.invalid:1"));   // evicted: a fresh channel now
        lease.Dispose();
        lease.Dispose();   // twice is harmless
    }
}
