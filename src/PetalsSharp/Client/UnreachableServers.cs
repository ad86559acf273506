using System.Collections.Concurrent;
using PetalsSharp.Swarm;

namespace PetalsSharp.Client;

/// <summary>
/// Addresses that did not answer a connect probe, remembered by every pool in this process. A DHT record is a claim
/// anyone can sign with a fresh key; an address that hung once would otherwise cost the probe timeout again at every
/// connect and every discovery. Each failure in a row doubles the time it is skipped (a <see cref="BanList"/>).
/// </summary>
internal static class UnreachableServers
{
    // Above this many entries, long-expired ones are dropped: a flood of unique addresses must not grow it for ever.
    const int PruneAbove = 4096;
    static readonly Lock Gate = new();
    static BanList _list = BanList.Empty;
    // Probes in flight in any pool: a client started while another still waits on an address need not dial it too.
    static readonly ConcurrentDictionary<string, int> InFlight = new(StringComparer.Ordinal);

    /// <summary>Whether <paramref name="address"/> failed lately or is being probed right now.</summary>
    public static bool IsRemembered(string address)
    {
        if (InFlight.ContainsKey(address)) return true;
        lock (Gate) return _list.IsBanned(address, DateTimeOffset.UtcNow);
    }

    public static void ProbeStarted(string address) => InFlight.AddOrUpdate(address, 1, (_, n) => n + 1);

    public static void ProbeEnded(string address)
    {
        if (InFlight.AddOrUpdate(address, 0, (_, n) => n - 1) <= 0) InFlight.TryRemove(new KeyValuePair<string, int>(address, 0));
    }

    public static void Failed(string address, TimeSpan memory)
    {
        var now = DateTimeOffset.UtcNow;
        lock (Gate)
        {
            _list = (_list with { BaseDuration = memory, MaxDuration = memory * 16 }).Ban(address, now);
            if (_list.Entries.Count > PruneAbove)
            {
                var stale = _list.Entries.Where(e => e.Value.Until + _list.MaxDuration < now).Select(e => e.Key);
                _list = _list with { Entries = _list.Entries.RemoveRange(stale) };
            }
        }
    }

    public static void Answered(string address)
    {
        lock (Gate) _list = _list.Success(address);
    }
}
