using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace PetalsSharp.Client;

/// <summary>What activation checks found in one pool (see <see cref="StepVerifier"/>).</summary>
/// <param name="Checks">Hop outputs recomputed on a second server.</param>
/// <param name="Unverifiable">Sampled hops that no second server could check (one server per span).</param>
/// <param name="Mismatches">Checks where the two servers disagreed beyond their precision.</param>
/// <param name="Banned">Servers a third server proved wrong, banned for the pool's lifetime.</param>
public sealed record VerificationStats(long Checks, long Unverifiable, long Mismatches, long Banned);

// Servers caught returning wrong activations: unlike a failure, a lie is not forgiven after a while.
internal sealed partial class RemotePool
{
    readonly ConcurrentDictionary<string, byte> _liars = new(StringComparer.Ordinal);
    long _checks, _unverifiable, _mismatches;
    readonly Lock _diceLock = new();
    Random? _dice;

    /// <summary>Whether the next step is checked: a draw at <see cref="RemoteOptions.VerifyRate"/>, seeded when asked.</summary>
    internal bool DrawVerification()
    {
        double rate = Options.VerifyRate;
        if (rate <= 0) return false;
        lock (_diceLock)
        {
            _dice ??= Options.VerifySeed is { } seed ? new Random(seed) : new Random();
            return _dice.NextDouble() < rate;
        }
    }

    public VerificationStats Verification =>
        new(Interlocked.Read(ref _checks), Interlocked.Read(ref _unverifiable), Interlocked.Read(ref _mismatches), _liars.Count);

    long _pushedSteps;

    /// <summary>Steps whose later hops got their input pushed from server to server (not from this client).</summary>
    public long PushedSteps => Interlocked.Read(ref _pushedSteps);

    internal void CountPushedStep() => Interlocked.Increment(ref _pushedSteps);
    internal void CountCheck() => Interlocked.Increment(ref _checks);
    internal void CountUnverifiable() => Interlocked.Increment(ref _unverifiable);
    internal void CountMismatch() => Interlocked.Increment(ref _mismatches);

    /// <summary>Bans <paramref name="address"/> for as long as this pool lives, logging the evidence.</summary>
    public void Distrust(string address, string evidence)
    {
        if (_liars.TryAdd(address, 0))
            Options.Logger.LogWarning("server {Address} returned wrong activations and is banned for this session: {Evidence}", address, evidence);
    }

    public bool IsDistrusted(string address) => _liars.ContainsKey(address);

    IEnumerable<string> Liars => _liars.Keys;
}
