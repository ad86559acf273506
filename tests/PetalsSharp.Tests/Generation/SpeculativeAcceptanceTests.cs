using PetalsSharp.Generation;
using Xunit;

namespace PetalsSharp.Tests.Generation;

/// <summary>
/// The speculative acceptance rule keeps the target's distribution: 10 000 seeded draws of the first emitted token
/// from a 4-token vocabulary pass a chi-square test against p (3 degrees of freedom, critical value 16.27 at
/// α = 0.001), with a sampled draft far from p and with a deterministic draft. Seeded, so the outcome never changes.
/// </summary>
public sealed class SpeculativeAcceptanceTests
{
    static readonly double[] P = [0.1, 0.2, 0.3, 0.4];
    static readonly double[] Q = [0.4, 0.3, 0.2, 0.1];
    const int Draws = 10_000;
    const double Critical = 16.27;

    [Fact]
    public void A_sampled_draft_leaves_the_first_token_distributed_as_p()
    {
        var rng = new Random(1234);
        var counts = new int[P.Length];
        int accepted = 0;
        for (int i = 0; i < Draws; i++)
        {
            int d = SpeculativeAcceptance.Draw(Q, 1.0, rng);
            var (keep, next) = SpeculativeAcceptance.Sample([P, P], [d], [Q], rng);
            counts[keep == 1 ? d : next]++;
            accepted += keep;
        }
        AssertDistributedAs(P, counts);
        // Σ min(p, q) = 0.1 + 0.2 + 0.2 + 0.1: the expected acceptance rate.
        Assert.InRange(accepted / (double)Draws, 0.57, 0.63);
    }

    [Fact]
    public void A_deterministic_draft_leaves_the_first_token_distributed_as_p()
    {
        var rng = new Random(99);
        var counts = new int[P.Length];
        for (int i = 0; i < Draws; i++)
        {
            var (keep, next) = SpeculativeAcceptance.Sample([P, P], [2], null, rng);
            counts[keep == 1 ? 2 : next]++;
        }
        AssertDistributedAs(P, counts);
    }

    [Fact]
    public void After_two_accepted_drafts_the_bonus_comes_from_the_last_row()
    {
        double[] certain = [0, 0, 1, 0], last = [0, 0, 0, 1];
        var (keep, next) = SpeculativeAcceptance.Sample([certain, certain, last], [2, 2], null, new Random(5));
        Assert.Equal((2, 3), (keep, next));
    }

    [Fact]
    public void Greedy_keeps_drafts_while_they_equal_the_argmax()
    {
        Assert.Equal((2, 9), SpeculativeAcceptance.Greedy([4, 5, 9, 7], [4, 5, 6]));
        Assert.Equal((3, 7), SpeculativeAcceptance.Greedy([4, 5, 6, 7], [4, 5, 6]));
        Assert.Equal((0, 1), SpeculativeAcceptance.Greedy([1], []));
        Assert.Throws<ArgumentException>(() => SpeculativeAcceptance.Greedy([1, 2], [1, 2]));
    }

    [Fact]
    public void Prompt_lookup_copies_what_followed_the_latest_match_of_the_last_ngram()
    {
        // "a b c d a b" → the bigram "a b" was followed by "c d a b".
        Assert.Equal([3, 4], PromptLookupDraft.Lookup([1, 2, 3, 4, 1, 2], 2));
        // The latest earlier match wins: "7 8" occurs twice before the end.
        Assert.Equal([5], PromptLookupDraft.Lookup([7, 8, 9, 7, 8, 5, 7, 8], 1));
        Assert.Empty(PromptLookupDraft.Lookup([1, 2, 3], 4));
        Assert.Empty(PromptLookupDraft.Lookup([1], 4));
    }

    static void AssertDistributedAs(double[] p, int[] counts)
    {
        int n = counts.Sum();
        double chi2 = p.Select((pi, i) => Math.Pow(counts[i] - n * pi, 2) / (n * pi)).Sum();
        Assert.True(chi2 < Critical, $"chi-square {chi2:F2} ≥ {Critical} for counts [{string.Join(", ", counts)}]");
    }
}
