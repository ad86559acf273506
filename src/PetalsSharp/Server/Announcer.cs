using Google.Protobuf;
using Microsoft.Extensions.Logging;
using PetalsSharp.Dht;
using PetalsSharp.Swarm;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;

namespace PetalsSharp.Server;

/// <summary>
/// Keeps a server's records in the DHT: one <see cref="ServerAnnouncement"/> under each of its block keys and one
/// <see cref="ModelIndexEntry"/> under the model index, re-announced every update period and expiring after two.
/// A clean stop announces OFFLINE; a crash lets the records expire.
/// </summary>
internal sealed class Announcer(BlockServer server, DhtNode dht, ThroughputInfo throughput, ILogger logger) : IAsyncDisposable
{
    readonly CancellationTokenSource _stop = new();
    Task? _loop;

    public ServerState State { get; private set; } = ServerState.Joining;

    IEnumerable<string> Keys => Enumerable.Range(server.Start, server.SpanLength)
        .Select(i => ModelNames.BlockKey(server.Options.ResolvedDhtPrefix, i));

    public async Task StartAsync(CancellationToken ct)
    {
        await AnnounceAsync(ServerState.Joining, ct);
        State = ServerState.Online;
        await AnnounceAsync(ServerState.Online, ct);
        _loop = Task.Run(LoopAsync);
    }

    async Task LoopAsync()
    {
        using var timer = new PeriodicTimer(server.Options.UpdatePeriod);
        try
        {
            while (await timer.WaitForNextTickAsync(_stop.Token))
            {
                try { await AnnounceAsync(State, _stop.Token); }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    logger.LogWarning("announcing failed (will retry in {Period} s): {Message}", server.Options.UpdatePeriod.TotalSeconds, e.Message);
                }
            }
        }
        catch (OperationCanceledException) { }
    }

    public ServerAnnouncement Announcement(ServerState state)
    {
        var a = new ServerAnnouncement
        {
            State = state, StartBlock = server.Start, EndBlock = server.End, Address = server.PublicAddress,
            PublicName = server.Options.PublicName ?? "", Throughput = throughput.Throughput,
            InferenceRps = throughput.InferenceRps, ForwardRps = throughput.ForwardRps, NetworkRps = throughput.NetworkRps,
            CacheTokensLeft = server.CacheTokensLeft, WeightsDtype = server.WeightsDtypeName,
            SoftwareVersion = Protocol.SoftwareVersion, ProtocolVersion = Protocol.Version,
            WeightsFingerprint = server.WeightsFingerprint, ModelName = server.Options.ResolvedModelName,
            AnnouncedAtMs = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(),
        };
        a.Compressions.AddRange(TensorCodec.Supported);
        return a;
    }

    async Task AnnounceAsync(ServerState state, CancellationToken ct)
    {
        var expiration = DateTimeOffset.UtcNow + 2 * server.Options.UpdatePeriod;
        var value = Announcement(state).ToByteArray();
        var stores = Keys.Select(k => dht.StoreAsync(k, value, expiration, ct)).ToList();
        var prefix = server.Options.ResolvedDhtPrefix;
        if (!prefix.StartsWith('_'))   // a '_' prefix keeps a model out of the index, as in Petals
        {
            var entry = new ModelIndexEntry
            {
                DhtPrefix = prefix, NumBlocks = server.Config.NumLayers, Repository = server.Options.ResolvedModelName,
                ModelType = server.Config.ModelType,
            };
            stores.Add(dht.StoreAsync(ModelNames.ModelIndexKey, entry.ToByteArray(), expiration, ct));
        }
        var accepted = await Task.WhenAll(stores);
        logger.LogDebug("announced {State} for blocks {Start}:{End} ({Stores} stores accepted)", state, server.Start, server.End, accepted.Sum());
    }

    /// <summary>Stops re-announcing and tells the swarm this server is gone.</summary>
    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        if (_loop is not null) await _loop;
        State = ServerState.Offline;
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await AnnounceAsync(ServerState.Offline, timeout.Token);
        }
        catch (Exception e)
        {
            logger.LogWarning("could not announce OFFLINE: {Message}", e.Message);
        }
        foreach (var key in Keys) dht.Forget(key);
        dht.Forget(ModelNames.ModelIndexKey);
        _stop.Dispose();
    }
}
