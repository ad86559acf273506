using PetalsSharp.Wire.V1;

namespace PetalsSharp.Swarm;

/// <summary>One server's place in a balancing computation: which blocks it holds and how fast it is.</summary>
public sealed record SpanLoad(string PeerId, int Start, int End, double Throughput)
{
    public int Length => End - Start;
}

/// <summary>Why <c>BlockSelection.ShouldMove</c> decided what it did (logged by the server).</summary>
/// <param name="Move">Whether the server should move.</param>
/// <param name="NewStart">Where it should move (its best start, even when it stays).</param>
/// <param name="Before">The swarm's bottleneck (weakest block throughput) now.</param>
/// <param name="After">The bottleneck after the simulated rebalancing (equals Before when nothing was simulated).</param>
/// <param name="Reason">A short human-readable reason.</param>
public sealed record MoveDecision(bool Move, int NewStart, double Before, double After, string Reason);

/// <summary>
/// Petals' block selection (design notes §4.2) as pure functions: a new server fills the weakest window of the
/// swarm, and a running server moves only when the swarm's bottleneck would rise enough to be worth the reload.
/// </summary>
public static class BlockSelection
{
    /// <summary>Petals' balance_quality default: move when before/after &lt; 0.75 (bottleneck up by more than 1/3).</summary>
    public const double DefaultBalanceQuality = 0.75;

    /// <summary>
    /// Our CLI speaks in "raise the bottleneck by more than T" (T = 0.25 by default): before/after &lt; 1/(1+T).
    /// </summary>
    public static double QualityFromThreshold(double threshold) =>
        threshold >= 0 ? 1 / (1 + threshold) : throw new ArgumentOutOfRangeException(nameof(threshold), "the threshold must be ≥ 0");

    /// <summary>Servers that count for balancing: JOINING ones too, so servers starting together do not pile up.</summary>
    public static IReadOnlyList<SpanLoad> Loads(SwarmSnapshot snapshot) =>
        snapshot.Servers.Where(s => s.State >= ServerState.Joining)
            .Select(s => new SpanLoad(s.PeerId, s.Start, s.End, s.Throughput)).ToList();

    /// <summary>Per block: the summed throughput of the servers covering it.</summary>
    public static double[] Throughputs(IEnumerable<SpanLoad> loads, int numBlocks)
    {
        var t = new double[numBlocks];
        foreach (var s in loads) Add(t, s.Start, s.End, s.Throughput);
        return t;
    }

    /// <summary>
    /// The start of the window of <paramref name="n"/> blocks whose sorted throughputs are lexicographically
    /// smallest: the window with the weakest block, ties broken by the next weakest, then by the lowest start.
    /// </summary>
    public static int ChooseBestBlocks(int n, IReadOnlyList<double> throughputs)
    {
        if (n < 1 || n > throughputs.Count)
            throw new ArgumentOutOfRangeException(nameof(n), $"cannot place {n} blocks in a model of {throughputs.Count}");
        int best = 0;
        double[]? bestSorted = null;
        for (int start = 0; start + n <= throughputs.Count; start++)
        {
            var sorted = new double[n];
            for (int i = 0; i < n; i++) sorted[i] = throughputs[start + i];
            Array.Sort(sorted);
            if (bestSorted is null || Compare(sorted, bestSorted) < 0) (best, bestSorted) = (start, sorted);
        }
        return best;
    }

    /// <summary>
    /// Whether <paramref name="self"/> should move, as Petals' should_choose_other_blocks: without its own
    /// contribution, find its best start; if that is elsewhere, simulate moving there and let every other server
    /// (in peer-id order, repeatedly) move to its own best start until nothing moves, then compare the bottleneck.
    /// Moves when before/after &lt; <paramref name="balanceQuality"/>; never when leaving would uncover a block
    /// only it covers. Any record of self's peer id in <paramref name="others"/> is ignored.
    /// </summary>
    public static MoveDecision ShouldMove(SpanLoad self, IEnumerable<SpanLoad> others, int numBlocks,
        double balanceQuality = DefaultBalanceQuality)
    {
        if (self.Start < 0 || self.End > numBlocks || self.Length < 1) throw new ArgumentOutOfRangeException(nameof(self));
        var spans = others.Where(o => o.PeerId != self.PeerId && o.Start >= 0 && o.End <= numBlocks && o.Length > 0)
            .OrderBy(o => o.PeerId, StringComparer.Ordinal).ToList();
        var t = Throughputs(spans, numBlocks);
        // Without self: what the swarm has if this server leaves its blocks.
        for (int i = self.Start; i < self.End; i++)
            if (t[i] <= 0) return new MoveDecision(false, self.Start, 0, 0, $"block {i} would be uncovered");
        double before = BottleneckWith(t, self);
        int newStart = ChooseBestBlocks(self.Length, t);
        if (newStart == self.Start) return new MoveDecision(false, newStart, before, before, "already at the best start");

        Add(t, newStart, newStart + self.Length, self.Throughput);
        var current = spans.Select(s => s.Start).ToArray();
        // Each pass moves a server only to a strictly better window, so the loop ends; the cap guards float ties.
        for (int pass = 0, moved = 1; moved > 0 && pass < 100; pass++)
        {
            moved = 0;
            for (int k = 0; k < spans.Count; k++)
            {
                var s = spans[k];
                Add(t, current[k], current[k] + s.Length, -s.Throughput);
                int best = ChooseBestBlocks(s.Length, t);
                if (best != current[k] && IsBetter(t, best, current[k], s.Length))
                {
                    current[k] = best;
                    moved++;
                }
                Add(t, current[k], current[k] + s.Length, s.Throughput);
            }
        }
        double after = t.Min();
        if (after <= 0) return new MoveDecision(false, newStart, before, after, "the swarm would still have a gap");
        if (after < before) return new MoveDecision(false, newStart, before, after, "the bottleneck would fall");
        bool move = before / after < balanceQuality;
        return new MoveDecision(move, newStart, before, after,
            move ? $"bottleneck {before:0.##} → {after:0.##}" : $"bottleneck {before:0.##} → {after:0.##} is not worth moving");
    }

    /// <summary><see cref="ShouldMove(SpanLoad, IEnumerable{SpanLoad}, int, double)"/> over a DHT snapshot.</summary>
    public static MoveDecision ShouldMove(SpanLoad self, SwarmSnapshot snapshot, double balanceQuality = DefaultBalanceQuality) =>
        ShouldMove(self, Loads(snapshot), snapshot.NumBlocks, balanceQuality);

    static double BottleneckWith(double[] without, SpanLoad self)
    {
        double min = double.PositiveInfinity;
        for (int i = 0; i < without.Length; i++)
            min = Math.Min(min, without[i] + (i >= self.Start && i < self.End ? self.Throughput : 0));
        return min;
    }

    // ChooseBestBlocks breaks ties by the lowest start; a server already in an equally good window stays put,
    // which keeps the simulation from shuffling servers between equivalent places forever.
    static bool IsBetter(double[] t, int candidate, int current, int n) =>
        Compare(Sorted(t, candidate, n), Sorted(t, current, n)) < 0;

    static double[] Sorted(double[] t, int start, int n)
    {
        var w = t[start..(start + n)];
        Array.Sort(w);
        return w;
    }

    static void Add(double[] t, int start, int end, double value)
    {
        for (int i = start; i < end; i++) t[i] += value;
    }

    static int Compare(double[] a, double[] b)
    {
        for (int i = 0; i < a.Length; i++)
        {
            int c = a[i].CompareTo(b[i]);
            if (c != 0) return c;
        }
        return 0;
    }
}
