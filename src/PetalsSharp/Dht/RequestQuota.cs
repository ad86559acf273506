using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;

namespace PetalsSharp.Dht;

/// <summary>
/// Per-address request rate of a DHT node: a token bucket per remote IP address (<paramref name="perSecond"/> refilled,
/// <paramref name="burst"/> deep). A peer that floods lookups or stores is refused past it while other addresses are
/// served. Loopback addresses are exempt when <paramref name="exemptLoopback"/>: a local swarm (and every test) shares
/// 127.0.0.1. Thread-safe; idle full buckets are dropped, so memory stays bounded by the addresses seen recently.
/// </summary>
public sealed class RequestQuota(double perSecond, double burst, bool exemptLoopback)
{
    sealed class Bucket
    {
        public double Tokens;
        public long Stamp;
    }

    const int SweepAbove = 10_000;
    readonly ConcurrentDictionary<string, Bucket> _buckets = new(StringComparer.Ordinal);

    public double PerSecond => perSecond;
    public double Burst => burst;

    /// <summary>Takes one request's token for <paramref name="peer"/> (gRPC's <c>ServerCallContext.Peer</c>); false when over quota.</summary>
    public bool TryTake(string? peer) => TryTake(peer, Stopwatch.GetTimestamp());

    internal bool TryTake(string? peer, long now)
    {
        if (double.IsPositiveInfinity(perSecond)) return true;
        var address = AddressOf(peer);
        if (address is null) return true;   // unix sockets and in-process calls: nothing to tell callers apart by
        if (exemptLoopback && IPAddress.TryParse(address, out var ip) && IPAddress.IsLoopback(ip)) return true;
        if (_buckets.Count > SweepAbove) Sweep(now);
        var bucket = _buckets.GetOrAdd(address, _ => new Bucket { Tokens = burst, Stamp = now });
        lock (bucket)
        {
            double elapsed = (now - bucket.Stamp) / (double)Stopwatch.Frequency;
            bucket.Tokens = Math.Min(burst, bucket.Tokens + elapsed * perSecond);
            bucket.Stamp = now;
            if (bucket.Tokens < 1) return false;
            bucket.Tokens -= 1;
            return true;
        }
    }

    /// <summary>The IP address in a gRPC peer string (<c>ipv4:1.2.3.4:5</c>, <c>ipv6:[::1]:5</c>); null for anything else.</summary>
    public static string? AddressOf(string? peer)
    {
        if (peer is null) return null;
        if (peer.StartsWith("ipv4:", StringComparison.Ordinal))
        {
            var rest = peer[5..];
            int colon = rest.LastIndexOf(':');
            return colon > 0 ? rest[..colon] : rest;
        }
        if (peer.StartsWith("ipv6:", StringComparison.Ordinal))
        {
            var rest = peer[5..];
            int close = rest.IndexOf(']');
            var host = rest.StartsWith('[') && close > 0 ? rest[1..close] : rest;
            // An IPv4-mapped address is the IPv4 peer it stands for.
            return IPAddress.TryParse(host, out var ip) && ip.IsIPv4MappedToIPv6 ? ip.MapToIPv4().ToString() : host;
        }
        return null;
    }

    void Sweep(long now)
    {
        foreach (var (address, bucket) in _buckets)
        {
            lock (bucket)
            {
                double elapsed = (now - bucket.Stamp) / (double)Stopwatch.Frequency;
                if (bucket.Tokens + elapsed * perSecond >= burst) _buckets.TryRemove(address, out _);
            }
        }
    }
}
