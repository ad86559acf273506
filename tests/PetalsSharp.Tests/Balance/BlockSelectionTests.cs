using PetalsSharp.Swarm;
using PetalsSharp.Wire.V1;
using Xunit;

namespace PetalsSharp.Tests.Balance;

/// <summary>Block selection and rebalancing decisions on hand-made swarms (no sockets).</summary>
public sealed class BlockSelectionTests
{
    static SpanLoad S(string id, int start, int end, double throughput) => new(id, start, end, throughput);

    static ServerInfo Info(string id, int start, int end, ServerState state, double throughput) =>
        new(id, $"127.0.0.1:{start}{end}", start, end, state, throughput, 0, 0, "", "float32", "", "", [], DateTimeOffset.UtcNow);

    [Fact]
    public void Per_block_throughput_counts_joining_and_online_servers_but_not_offline_ones()
    {
        var snapshot = new SwarmSnapshot("m", 4, [
            Info("a", 0, 2, ServerState.Online, 10), Info("b", 1, 4, ServerState.Joining, 5), Info("c", 0, 4, ServerState.Offline, 100)]);
        Assert.Equal([10, 15, 5, 5], BlockSelection.Throughputs(BlockSelection.Loads(snapshot), 4));
    }

    [Theory]
    [InlineData(new double[] { 100, 100, 0, 0, 100, 100 }, 2, 2)]     // a gap is filled
    [InlineData(new double[] { 100, 100, 0, 100, 100, 100 }, 3, 0)]   // every window holding the gap ties on it and on the next: lowest start
    [InlineData(new double[] { 300, 300, 100, 200, 200, 200 }, 2, 2)]  // the bottleneck block, then its weaker neighbour
    [InlineData(new double[] { 5, 1, 5, 1, 3 }, 2, 3)]                 // ties on the weakest broken by the next weakest
    [InlineData(new double[] { 7, 7, 7, 7 }, 2, 0)]                    // all equal: the lowest start
    [InlineData(new double[] { 7, 1, 7 }, 3, 0)]                       // the whole model
    public void ChooseBestBlocks_takes_the_window_with_the_lexicographically_smallest_sorted_throughputs(double[] t, int n, int expected) =>
        Assert.Equal(expected, BlockSelection.ChooseBestBlocks(n, t));

    [Fact]
    public void ChooseBestBlocks_refuses_spans_that_do_not_fit()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => BlockSelection.ChooseBestBlocks(0, [1.0, 2.0]));
        Assert.Throws<ArgumentOutOfRangeException>(() => BlockSelection.ChooseBestBlocks(3, [1.0, 2.0]));
    }

    [Fact]
    public void A_redundant_server_moves_into_a_gap()
    {
        var d = BlockSelection.ShouldMove(S("self", 0, 4, 100), [S("a", 0, 4, 100)], 8);
        Assert.True(d.Move, d.Reason);
        Assert.Equal(4, d.NewStart);
        Assert.Equal(0, d.Before);
        Assert.Equal(100, d.After);
    }

    [Fact]
    public void A_server_never_moves_when_leaving_would_uncover_a_block()
    {
        var d = BlockSelection.ShouldMove(S("self", 0, 4, 100), [S("a", 2, 8, 500)], 8);
        Assert.False(d.Move);
        Assert.Contains("uncovered", d.Reason);
    }

    [Fact]
    public void A_balanced_swarm_stays_put()
    {
        // Self's best start elsewhere (0) is only as good as where it is: the bottleneck stays 100.
        var d = BlockSelection.ShouldMove(S("self", 2, 6, 100), [S("a", 0, 4, 100), S("b", 4, 8, 100)], 8);
        Assert.False(d.Move, d.Reason);
        Assert.Equal(d.Before, d.After);
        // Already at its best start: no simulation at all.
        var home = BlockSelection.ShouldMove(S("self", 4, 8, 100), [S("a", 0, 8, 100), S("b", 0, 4, 100)], 8);
        Assert.False(home.Move);
        Assert.Equal(4, home.NewStart);
    }

    [Fact]
    public void A_server_moves_to_the_bottleneck_when_it_rises_enough()
    {
        // Blocks 0:4 have 300, blocks 4:8 have 100: moving self doubles the bottleneck.
        var d = BlockSelection.ShouldMove(S("self", 0, 4, 100), [S("a", 0, 8, 100), S("b", 0, 4, 100)], 8);
        Assert.True(d.Move, d.Reason);
        Assert.Equal((4, 100.0, 200.0), (d.NewStart, d.Before, d.After));
    }

    [Fact]
    public void A_small_gain_is_not_worth_moving_unless_the_threshold_is_lower()
    {
        // The bottleneck would rise from 100 to 110 (+10%).
        SpanLoad self = S("self", 0, 4, 30);
        SpanLoad[] others = [S("a", 0, 8, 100), S("b", 0, 4, 10)];
        var d = BlockSelection.ShouldMove(self, others, 8, BlockSelection.QualityFromThreshold(0.25));
        Assert.False(d.Move, d.Reason);
        Assert.Equal((100.0, 110.0), (d.Before, d.After));
        Assert.True(BlockSelection.ShouldMove(self, others, 8, BlockSelection.QualityFromThreshold(0.05)).Move);
    }

    [Fact]
    public void Records_of_self_among_the_others_are_ignored()
    {
        var alone = BlockSelection.ShouldMove(S("self", 0, 4, 100), [S("a", 0, 4, 100)], 8);
        var withStale = BlockSelection.ShouldMove(S("self", 0, 4, 100), [S("a", 0, 4, 100), S("self", 0, 4, 100)], 8);
        Assert.Equal(alone, withStale);
    }

    [Theory]
    [InlineData(0.25, 0.8)]
    [InlineData(1.0 / 3, 0.75)]
    [InlineData(0, 1)]
    public void The_cli_threshold_maps_to_balance_quality(double threshold, double quality) =>
        Assert.Equal(quality, BlockSelection.QualityFromThreshold(threshold), 9);
}
