using Google.Protobuf;
using Microsoft.Extensions.Logging;
using PetalsSharp.Dht;
using PetalsSharp.Relay.V1;

namespace PetalsSharp.Relay;

/// <summary>A relay as its DHT record describes it: where servers register, and how full it is.</summary>
public sealed record RelayInfo(string PeerId, string Address, int Servers, int MaxServers)
{
    /// <summary>The dial string, pinned to the relay's key (it signed the record).</summary>
    public string Dial(bool tls) => Wire.PeerTarget.Dial(Address, tls, PeerId);
}

/// <summary>
/// Relays find servers through the DHT: each relay keeps a signed <see cref="RelayAnnouncement"/> under one
/// swarm-wide key, and a server in relay mode reads them. Announcements are hostile input: bounded and validated.
/// </summary>
public static class RelayDirectory
{
    /// <summary>The DHT key every relay announces under (the '_' keeps it apart from model prefixes).</summary>
    public const string Key = "_petals.relays";

    /// <summary>The relays the DHT lists now, fullest last, in random order among equals (spreading servers over relays).</summary>
    public static async Task<IReadOnlyList<RelayInfo>> FindAsync(DhtNode dht, CancellationToken ct)
    {
        var entries = await dht.GetAsync(Key, ct).ConfigureAwait(false);
        var relays = new List<RelayInfo>();
        foreach (var e in entries.Take(256))
        {
            RelayAnnouncement a;
            try { a = RelayAnnouncement.Parser.ParseFrom(e.Value); }
            catch (InvalidProtocolBufferException) { continue; }
            if (!DhtAddress.TryParse(a.Address, out var address, out _) || a.Address.Length > 256) continue;
            relays.Add(new RelayInfo(e.Subkey, address, Math.Max(0, a.Servers), Math.Max(0, a.MaxServers)));
        }
        return relays.OrderBy(r => r.MaxServers > 0 && r.Servers >= r.MaxServers).ThenBy(_ => Random.Shared.Next()).ToList();
    }

    /// <summary>
    /// Keeps <paramref name="hub"/>'s announcement in the DHT (every <paramref name="period"/>, expiring after
    /// three) until <paramref name="ct"/> fires; the first store happens before this returns.
    /// </summary>
    public static async Task<Task> AnnounceAsync(DhtNode dht, RelayHub hub, TimeSpan period, ILogger logger, CancellationToken ct)
    {
        async Task StoreAsync()
        {
            var value = new RelayAnnouncement { Address = dht.Address, Servers = hub.Servers, MaxServers = hub.Options.MaxServers }.ToByteArray();
            await dht.StoreAsync(Key, value, DateTimeOffset.UtcNow + 3 * period, ct).ConfigureAwait(false);
        }
        try { await StoreAsync().ConfigureAwait(false); }
        catch (Exception e) when (e is not OperationCanceledException) { logger.LogWarning("announcing the relay failed (will retry): {Message}", e.Message); }
        return Task.Run(async () =>
        {
            using var timer = new PeriodicTimer(period);
            try
            {
                while (await timer.WaitForNextTickAsync(ct).ConfigureAwait(false))
                {
                    try { await StoreAsync().ConfigureAwait(false); }
                    catch (Exception e) when (e is not OperationCanceledException) { logger.LogWarning("announcing the relay failed (will retry): {Message}", e.Message); }
                }
            }
            catch (OperationCanceledException) { }
        }, CancellationToken.None);
    }
}
