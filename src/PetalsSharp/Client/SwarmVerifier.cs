using PetalsSharp.Dht;
using PetalsSharp.Swarm;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;

namespace PetalsSharp.Client;

/// <summary>
/// Which announced servers answer: an announcement is a signed claim that anyone can make with a fresh key, so a
/// swarm view that counts records counts whatever an attacker wrote. One Info per distinct address, all at once.
/// </summary>
public static class SwarmVerifier
{
    /// <summary>Distinct addresses probed per call; beyond it, servers stay unverified rather than cost more time.</summary>
    public const int MaxProbes = 1024;

    /// <summary>
    /// The ONLINE servers of <paramref name="snapshot"/> whose address answered Info within <paramref name="timeout"/>
    /// with the same model size and span as announced.
    /// </summary>
    public static async Task<IReadOnlySet<ServerInfo>> VerifyAsync(SwarmSnapshot snapshot, SwarmKey? swarmKey, TimeSpan timeout,
        CancellationToken ct = default, bool tls = true)
    {
        // Dialed pinned to each record's signer: a record naming someone else's address fails the TLS handshake.
        var addresses = snapshot.Online.Select(s => s.Dial(tls)).Distinct(StringComparer.Ordinal).Take(MaxProbes).ToList();
        var infos = await Task.WhenAll(addresses.Select(a => InfoAsync(a, swarmKey, timeout, ct))).ConfigureAwait(false);
        var answered = addresses.Zip(infos).Where(x => x.Second is not null).ToDictionary(x => x.First, x => x.Second!, StringComparer.Ordinal);
        return snapshot.Online.Where(s => answered.TryGetValue(s.Dial(tls), out var i)
            && i.NumBlocks == snapshot.NumBlocks && i.StartBlock == s.Start && i.EndBlock == s.End).ToHashSet();
    }

    /// <summary>
    /// The snapshot with only verified servers, one per address (records of other peer ids naming an honest server's
    /// address must not count it twice), for coverage that reflects servers that exist.
    /// </summary>
    public static SwarmSnapshot Verified(SwarmSnapshot snapshot, IReadOnlySet<ServerInfo> verified) => snapshot with
    {
        Servers = snapshot.Servers.Where(verified.Contains).DistinctBy(s => s.Address, StringComparer.Ordinal).ToList(),
    };

    static async Task<InfoReply?> InfoAsync(string address, SwarmKey? swarmKey, TimeSpan timeout, CancellationToken ct)
    {
        try
        {
            using var channel = PeerChannels.Create(address, new PeerChannelOptions(Protocol.DefaultMaxMessageBytes));
            var client = new BlockService.BlockServiceClient(SwarmAuth.Apply(channel, swarmKey));
            return await client.InfoAsync(new InfoRequest(), deadline: DateTime.UtcNow + timeout, cancellationToken: ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            return null;
        }
    }
}
