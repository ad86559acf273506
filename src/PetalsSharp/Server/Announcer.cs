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
/// A clean stop announces OFFLINE; a crash lets the records expire. A move announces the new span and then
/// retires the blocks left behind.
/// </summary>
internal sealed class Announcer(BlockServer server, DhtNode dht, ILogger logger) : IAsyncDisposable
{
    readonly CancellationTokenSource _stop = new();
    // One announcement at a time: the periodic loop must not re-announce a span a move just replaced.
    readonly SemaphoreSlim _gate = new(1, 1);
    (int Start, int End, ServerState State) _current = (0, 0, ServerState.Joining);
    DateTimeOffset _currentExpiration;
    Task? _loop;
    readonly NextPinger _pinger = new(server.Options, server.Peers);
    IReadOnlyDictionary<string, double> _nextPings = new Dictionary<string, double>();

    public ServerState State => _current.State;

    /// <summary>The throughput announced from now on.</summary>
    public ThroughputInfo Throughput { get; set; } = ThroughputInfo.Fixed(0);

    string Key(int block) => ModelNames.BlockKey(server.Options.ResolvedDhtPrefix, block);

    /// <summary>Announces <paramref name="state"/> for [start, end) and keeps re-announcing it.</summary>
    public async Task AnnounceAsync(int start, int end, ServerState state, CancellationToken ct)
    {
        await _gate.WaitAsync(ct);
        try
        {
            _current = (start, end, state);
            _currentExpiration = await StoreAsync(start, end, state, DateTimeOffset.UtcNow + 2 * server.Options.UpdatePeriod, ct);
        }
        finally { _gate.Release(); }
    }

    /// <summary>Announces the current span and state again now: the server's address changed (a new relay).</summary>
    public async Task RefreshAsync(CancellationToken ct)
    {
        await _gate.WaitAsync(ct);
        try
        {
            var (start, end, state) = _current;
            if (end > start) _currentExpiration = await StoreAsync(start, end, state, DateTimeOffset.UtcNow + 2 * server.Options.UpdatePeriod, ct);
        }
        finally { _gate.Release(); }
    }

    /// <summary>
    /// OFFLINE for the blocks of [start, end) outside the current span, then stops republishing them. Readers
    /// merge a peer's records by latest expiration, so these expire just before the current span's records:
    /// late enough to replace the old ONLINE ones, early enough never to hide the new span.
    /// </summary>
    public async Task RetireAsync(int start, int end, CancellationToken ct)
    {
        await _gate.WaitAsync(ct);
        try
        {
            var blocks = Enumerable.Range(start, end - start).Where(b => b < _current.Start || b >= _current.End).ToList();
            if (blocks.Count == 0) return;
            var value = Announcement(start, end, ServerState.Offline).ToByteArray();
            var expiration = _currentExpiration - TimeSpan.FromMilliseconds(1);
            await Task.WhenAll(blocks.Select(b => dht.StoreAsync(Key(b), value, expiration, ct)));
            foreach (var b in blocks) dht.Forget(Key(b));
            logger.LogDebug("announced OFFLINE for blocks {Blocks}", string.Join(",", blocks));
        }
        finally { _gate.Release(); }
    }

    public void StartLoop() => _loop ??= Task.Run(LoopAsync);

    async Task LoopAsync()
    {
        using var timer = new PeriodicTimer(server.Options.UpdatePeriod);
        try
        {
            while (await timer.WaitForNextTickAsync(_stop.Token))
            {
                try
                {
                    try { _nextPings = await _pinger.MeasureAsync(dht, server.Config.NumLayers, _current.End, server.PublicAddress, _stop.Token); }
                    catch (Exception e) when (e is not OperationCanceledException)
                    {
                        logger.LogDebug("measuring next pings failed: {Message}", e.Message);
                    }
                    await _gate.WaitAsync(_stop.Token);
                    try
                    {
                        var (start, end, state) = _current;
                        _currentExpiration = await StoreAsync(start, end, state, DateTimeOffset.UtcNow + 2 * server.Options.UpdatePeriod, _stop.Token);
                    }
                    finally { _gate.Release(); }
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    logger.LogWarning("announcing failed (will retry in {Period} s): {Message}", server.Options.UpdatePeriod.TotalSeconds, e.Message);
                }
            }
        }
        catch (OperationCanceledException) { }
    }

    public ServerAnnouncement Announcement(int start, int end, ServerState state)
    {
        var a = new ServerAnnouncement
        {
            State = state, StartBlock = start, EndBlock = end, Address = server.PublicAddress,
            PublicName = server.Options.PublicName ?? "", Throughput = Throughput.Throughput,
            InferenceRps = Throughput.InferenceRps, ForwardRps = Throughput.ForwardRps, NetworkRps = Throughput.NetworkRps,
            CacheTokensLeft = server.CacheTokensLeft, WeightsDtype = server.WeightsDtypeName, Quant = server.QuantName,
            SoftwareVersion = Protocol.SoftwareVersion, ProtocolVersion = Protocol.Version,
            // While JOINING a new span the loaded blocks are still the old ones: announce no fingerprint then.
            WeightsFingerprint = server.Start == start && server.End == end ? server.WeightsFingerprint : "",
            ModelName = server.Options.ResolvedModelName, AnnouncedAtMs = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(),
            Relay = server.RelayName,
        };
        a.Compressions.AddRange(TensorCodec.Supported);
        a.Adapters.AddRange(server.Adapters.Names);
        foreach (var (address, seconds) in _nextPings) a.NextPings[address] = Math.Min(seconds, RoutePlanner.MaxDelay);
        return a;
    }

    async Task<DateTimeOffset> StoreAsync(int start, int end, ServerState state, DateTimeOffset expiration, CancellationToken ct)
    {
        var value = Announcement(start, end, state).ToByteArray();
        var stores = Enumerable.Range(start, end - start).Select(b => dht.StoreAsync(Key(b), value, expiration, ct)).ToList();
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
        logger.LogDebug("announced {State} for blocks {Start}:{End} ({Stores} stores accepted)", state, start, end, accepted.Sum());
        return expiration;
    }

    /// <summary>Stops re-announcing and tells the swarm this server is gone.</summary>
    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        if (_loop is not null) await _loop;
        var (start, end, _) = _current;
        _current = (start, end, ServerState.Offline);
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            if (end > start) await StoreAsync(start, end, ServerState.Offline, DateTimeOffset.UtcNow + 2 * server.Options.UpdatePeriod, timeout.Token);
        }
        catch (Exception e)
        {
            logger.LogWarning("could not announce OFFLINE: {Message}", e.Message);
        }
        for (int b = start; b < end; b++) dht.Forget(Key(b));
        dht.Forget(ModelNames.ModelIndexKey);
        _stop.Dispose();
    }
}
