using System.Collections.Immutable;

namespace PetalsSharp.Swarm;

/// <summary>
/// Temporary bans of misbehaving peers (hivemind's <c>Blacklist</c> as Petals' client uses it). Immutable: each
/// transition returns a new list, so a client keeps it in one field and swaps it under a lock.
/// </summary>
public sealed record BanList
{
    /// <summary>Length of a first ban (Petals' <c>ban_timeout</c>).</summary>
    public TimeSpan BaseDuration { get; init; } = TimeSpan.FromSeconds(15);

    /// <summary>Longest ban, so a peer that recovers is retried within minutes however often it failed.</summary>
    public TimeSpan MaxDuration { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>Per peer: failures in a row so far and when the current ban ends.</summary>
    public ImmutableDictionary<string, (int Failures, DateTimeOffset Until)> Entries { get; init; } =
        ImmutableDictionary<string, (int, DateTimeOffset)>.Empty;

    /// <summary>An empty list with Petals' defaults (15 s, doubling, capped at 5 min).</summary>
    public static BanList Empty { get; } = new();

    /// <summary>
    /// Records a failure of <paramref name="peer"/>: bans it for base × 2^(failures in a row − 1), capped. A failure
    /// while the peer is still banned does not count again: requests that were in flight when it broke all fail
    /// together, and that is one incident, not many.
    /// </summary>
    public BanList Ban(string peer, DateTimeOffset now)
    {
        var failures = 0;
        if (Entries.TryGetValue(peer, out var entry))
        {
            if (entry.Until > now) return this;
            failures = entry.Failures;
        }
        var ticks = BaseDuration.Ticks * Math.Pow(2, Math.Min(failures, 62));
        var duration = ticks >= MaxDuration.Ticks ? MaxDuration : TimeSpan.FromTicks((long)ticks);
        return this with { Entries = Entries.SetItem(peer, (failures + 1, now + duration)) };
    }

    /// <summary>
    /// <paramref name="peer"/> answered "busy" (no cache room now): it is avoided for <paramref name="duration"/> (its
    /// retry hint), which steers routing elsewhere, but that is load, not a failure: the streak is kept as it was
    /// and a longer ban already running is not shortened.
    /// </summary>
    public BanList Busy(string peer, DateTimeOffset now, TimeSpan duration)
    {
        var until = now + duration;
        if (Entries.TryGetValue(peer, out var entry))
            return entry.Until >= until ? this : this with { Entries = Entries.SetItem(peer, (entry.Failures, until)) };
        return this with { Entries = Entries.SetItem(peer, (0, until)) };
    }

    /// <summary>A request to <paramref name="peer"/> succeeded: lifts its ban and forgets its streak.</summary>
    public BanList Success(string peer) => Entries.ContainsKey(peer) ? this with { Entries = Entries.Remove(peer) } : this;

    /// <summary>Whether <paramref name="peer"/> is banned at <paramref name="now"/>.</summary>
    public bool IsBanned(string peer, DateTimeOffset now) => Entries.TryGetValue(peer, out var e) && e.Until > now;

    /// <summary>When the ban of <paramref name="peer"/> ends, or null when it is not banned.</summary>
    public DateTimeOffset? BannedUntil(string peer, DateTimeOffset now) => IsBanned(peer, now) ? Entries[peer].Until : null;

    /// <summary>Peers banned at <paramref name="now"/>, for <see cref="RoutingInputs.BannedPeers"/>.</summary>
    public IReadOnlySet<string> BannedPeers(DateTimeOffset now) =>
        Entries.Where(e => e.Value.Until > now).Select(e => e.Key).ToHashSet(StringComparer.Ordinal);
}

/// <summary>
/// The client's round-trip times to peers: an exponential moving average per peer that expires when not refreshed
/// (hivemind's <c>PingAggregator</c>). A failed ping records +∞, which routing treats as "reachable only as a
/// last resort"; the next successful ping replaces it instead of averaging with it. Immutable like <see cref="BanList"/>.
/// </summary>
public sealed record RttEstimator
{
    /// <summary>Weight of a new sample.</summary>
    public double Alpha { get; init; } = 0.2;

    /// <summary>How long a peer's estimate lives after its last sample: stale numbers are worse than the default.</summary>
    public TimeSpan Expiry { get; init; } = TimeSpan.FromSeconds(300);

    /// <summary>Per peer: the smoothed RTT in seconds and when it expires.</summary>
    public ImmutableDictionary<string, (double Rtt, DateTimeOffset Expires)> Entries { get; init; } =
        ImmutableDictionary<string, (double, DateTimeOffset)>.Empty;

    /// <summary>An empty estimator with Petals' defaults (α 0.2, 300 s expiry).</summary>
    public static RttEstimator Empty { get; } = new();

    /// <summary>Adds a measured round trip of <paramref name="rttSeconds"/> (+∞ for a failed ping).</summary>
    public RttEstimator Observe(string peer, double rttSeconds, DateTimeOffset now)
    {
        if (double.IsNaN(rttSeconds) || rttSeconds < 0) throw new ArgumentOutOfRangeException(nameof(rttSeconds), rttSeconds, "an RTT is ≥ 0 or +∞");
        var rtt = rttSeconds;
        if (Entries.TryGetValue(peer, out var prev) && prev.Expires > now && double.IsFinite(prev.Rtt))
            rtt = Alpha * rttSeconds + (1 - Alpha) * prev.Rtt;
        return this with { Entries = Entries.SetItem(peer, (rtt, now + Expiry)) };
    }

    /// <summary>Records a ping that failed or timed out.</summary>
    public RttEstimator ObserveFailure(string peer, DateTimeOffset now) => Observe(peer, double.PositiveInfinity, now);

    /// <summary>The current estimate for <paramref name="peer"/>, or null when unknown or expired.</summary>
    public double? Get(string peer, DateTimeOffset now) =>
        Entries.TryGetValue(peer, out var e) && e.Expires > now ? e.Rtt : null;

    /// <summary>Unexpired estimates, for <see cref="RoutingInputs.ClientRtts"/>.</summary>
    public IReadOnlyDictionary<string, double> Snapshot(DateTimeOffset now) =>
        Entries.Where(e => e.Value.Expires > now).ToDictionary(e => e.Key, e => e.Value.Rtt, StringComparer.Ordinal);

    /// <summary>Drops expired entries (estimates never shrink the dictionary on their own).</summary>
    public RttEstimator Prune(DateTimeOffset now) =>
        this with { Entries = Entries.RemoveRange(Entries.Where(e => e.Value.Expires <= now).Select(e => e.Key)) };
}
