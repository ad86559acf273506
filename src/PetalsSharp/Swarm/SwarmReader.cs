using Google.Protobuf;
using PetalsSharp.Dht;
using PetalsSharp.Wire.V1;

namespace PetalsSharp.Swarm;

/// <summary>Reads a model's swarm from the DHT into an immutable <see cref="SwarmSnapshot"/>.</summary>
public static class SwarmReader
{
    /// <summary>Every server announced under the model's block keys (signatures already verified by the DHT).</summary>
    public static async Task<SwarmSnapshot> ReadAsync(DhtNode dht, string prefix, int numBlocks, CancellationToken ct = default)
    {
        var keys = Enumerable.Range(0, numBlocks).Select(i => ModelNames.BlockKey(prefix, i)).ToList();
        var entries = await dht.GetManyAsync(keys, ct).ConfigureAwait(false);
        var records = new List<ServerInfo>();
        for (int block = 0; block < numBlocks; block++)
        {
            if (!entries.TryGetValue(keys[block], out var list)) continue;
            foreach (var e in list)
            {
                ServerAnnouncement a;
                try { a = ServerAnnouncement.Parser.ParseFrom(e.Value); }
                catch (InvalidProtocolBufferException) { continue; }   // a signed but malformed value: ignore its owner here
                var info = ServerInfo.FromAnnouncement(e.Subkey, a, numBlocks, e.Expiration);
                // A record under block i must claim a span that holds block i, or it is lying about one of them.
                if (info is not null && info.Start <= block && block < info.End) records.Add(info);
            }
        }
        return SwarmSnapshot.FromRecords(prefix, numBlocks, records);
    }

    /// <summary>The servers announced under block <paramref name="block"/>'s key alone (one DHT lookup instead of one per block).</summary>
    public static async Task<IReadOnlyList<ServerInfo>> ReadBlockAsync(DhtNode dht, string prefix, int numBlocks, int block,
        CancellationToken ct = default)
    {
        var records = new List<ServerInfo>();
        foreach (var e in await dht.GetAsync(ModelNames.BlockKey(prefix, block), ct).ConfigureAwait(false))
        {
            ServerAnnouncement a;
            try { a = ServerAnnouncement.Parser.ParseFrom(e.Value); }
            catch (InvalidProtocolBufferException) { continue; }
            var info = ServerInfo.FromAnnouncement(e.Subkey, a, numBlocks, e.Expiration);
            if (info is not null && info.Start <= block && block < info.End) records.Add(info);
        }
        return records;
    }

    /// <summary>The models listed in the DHT's model index.</summary>
    public static async Task<IReadOnlyList<ModelIndexEntry>> ReadModelsAsync(DhtNode dht, CancellationToken ct = default)
    {
        var result = new Dictionary<string, ModelIndexEntry>();
        foreach (var e in await dht.GetAsync(ModelNames.ModelIndexKey, ct).ConfigureAwait(false))
        {
            try
            {
                var entry = ModelIndexEntry.Parser.ParseFrom(e.Value);
                if (entry.DhtPrefix.Length is > 0 and <= 256 && entry.NumBlocks is > 0 and <= 100_000) result.TryAdd(entry.DhtPrefix, entry);
            }
            catch (InvalidProtocolBufferException) { }
        }
        return result.Values.OrderBy(m => m.DhtPrefix, StringComparer.Ordinal).ToList();
    }

    /// <summary>How long a client keeps retrying unreachable initial peers by default: long enough for a busy
    /// machine or a slow link, short enough that a mistyped address fails while the user still waits.</summary>
    public static readonly TimeSpan ClientJoinTimeout = TimeSpan.FromSeconds(20);

    /// <summary>A client-mode DHT node (reads and writes, stores nothing) joined through <paramref name="initialPeers"/>.</summary>
    /// <param name="initialPeers">Bootstrap peers (HOST:PORT, optionally /NODE_ID).</param>
    /// <param name="swarmKey">The private swarm's key, or null.</param>
    /// <param name="ct">Cancels the join.</param>
    /// <param name="joinTimeout">How long to retry unreachable peers (default <see cref="ClientJoinTimeout"/>; zero = one try).</param>
    /// <param name="logger">Where failed attempts are reported.</param>
    /// <param name="tls">Whether the swarm runs TLS (see <see cref="DhtNodeOptions.Tls"/>).</param>
    public static async Task<DhtNode> JoinAsClientAsync(IEnumerable<string> initialPeers, SwarmKey? swarmKey, CancellationToken ct = default,
        TimeSpan? joinTimeout = null, Microsoft.Extensions.Logging.ILogger? logger = null, bool tls = true)
    {
        var dht = DhtNode.Create(new DhtNodeOptions { SwarmKey = swarmKey, JoinTimeout = joinTimeout ?? ClientJoinTimeout, Logger = logger, Tls = tls });
        try
        {
            await dht.BootstrapAsync(initialPeers, ct).ConfigureAwait(false);
            return dht;
        }
        catch
        {
            await dht.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }
}
