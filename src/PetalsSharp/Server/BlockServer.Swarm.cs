using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;
using PetalsSharp.Swarm;
using PetalsSharp.Wire.V1;

namespace PetalsSharp.Server;

// Joining the swarm: placement, throughput, announcements and moving to other blocks.
public sealed partial class BlockServer
{
    /// <summary>
    /// The span for one call; the caller must <see cref="ServedSpan.Exit"/> it. A span retired between reading
    /// and entering is skipped: the swap has already put its successor in place.
    /// </summary>
    internal ServedSpan EnterSpan()
    {
        while (true)
        {
            var span = Current ?? throw RequestValidator.Error(StatusCode.Unavailable, "this server is still choosing and loading its blocks");
            if (span.TryEnter()) return span;
        }
    }

    async Task JoinSwarmAsync(WebApplication app, Dht.DhtNode dht, CancellationToken ct)
    {
        // A server with no inbound port stays a DHT client: peers could not dial it back.
        if (Options.Reachability != Reachability.Relay) dht.Start(app);
        if (Options.InitialPeers.Count > 0) await dht.BootstrapAsync(Options.InitialPeers, ct);
        await ResolveReachabilityAsync(dht, ct);
        _announcer = new Announcer(this, dht, _logger);
        if (Options.NumBlocks is { } n)
        {
            // Measure before choosing (on one block when the cache misses) so JOINING already carries a real
            // throughput: servers starting next to this one count it when they choose.
            Throughput = await ResolveThroughputAsync(n, ct);
            _announcer.Throughput = Throughput;
            int start = await ChooseStartAsync(dht, n, ct);
            await _announcer.AnnounceAsync(start, start + n, ServerState.Joining, ct);
            _logger.LogInformation("JOINING for blocks {Start}:{End} (chosen by the swarm's load); loading them", start, start + n);
            if (Options.FetchBlocks is { } fetch) await fetch(start, start + n, ct);
            Volatile.Write(ref _span, await Task.Run(() => ServedSpan.Load(_checkpoint, Options, start, start + n), ct));
        }
        else
        {
            Throughput = await ResolveThroughputAsync(SpanLength, ct);
            _announcer.Throughput = Throughput;
            await _announcer.AnnounceAsync(Start, End, ServerState.Joining, ct);
        }
        await _announcer.AnnounceAsync(Start, End, ServerState.Online, ct);
        _announcer.StartLoop();
        _logger.LogInformation("ONLINE for blocks {Start}:{End} in the swarm as {Peer}{Relay} (prefix {Prefix}, throughput {Throughput:F0} tok/s)",
            Start, End, $"{PublicAddress}/{dht.Id}", RelayName.Length > 0 ? $" via relay {RelayName}" : "", Options.ResolvedDhtPrefix, Throughput.Throughput);
        await AnnounceHostedRelayAsync(dht, ct);
        StartAddressWatch();
        if (Options.AutoPlaced && Options.RebalancePeriod > TimeSpan.Zero)
            _rebalancer = Rebalancer.Start(this, dht, _loggerFactory.CreateLogger("petals.balance"));
    }

    async Task<int> ChooseStartAsync(Dht.DhtNode dht, int n, CancellationToken ct)
    {
        // Servers started together would all read the same swarm and pick the same gap.
        if (Options.PlacementDelay > TimeSpan.Zero)
            await Task.Delay(Options.PlacementDelay * Random.Shared.NextDouble(), ct);
        var snapshot = await SwarmReader.ReadAsync(dht, Options.ResolvedDhtPrefix, Config.NumLayers, ct);
        var throughputs = BlockSelection.Throughputs(BlockSelection.Loads(snapshot), Config.NumLayers);
        int start = BlockSelection.ChooseBestBlocks(n, throughputs);
        _logger.LogInformation("chose blocks {Start}:{End} of {Blocks}: per-block throughput of the swarm [{Throughputs}] ({Servers} server(s))",
            start, start + n, Config.NumLayers, string.Join(" ", throughputs.Select(t => t.ToString("0"))), snapshot.Servers.Count);
        return start;
    }

    /// <summary>The operator's number, else the cached per-block rates, else a measurement (which is then cached).</summary>
    async Task<ThroughputInfo> ResolveThroughputAsync(int blocks, CancellationToken ct)
    {
        if (Options.FixedThroughput is { } fixedValue)
        {
            _logger.LogInformation("throughput {Throughput:F0} tok/s (given by --throughput)", fixedValue);
            return ThroughputInfo.Fixed(fixedValue);
        }
        var cache = new ThroughputCache(Options.ThroughputCachePath ?? ThroughputCache.DefaultPath);
        var key = ThroughputCache.Key(Options.ResolvedModelName, Options.ModelDir, Options.Quant == Models.Quant.QuantFormat.None ? WeightsDtypeName : QuantName);
        var (info, hit) = await Scheduler.RunAsync(ComputeScheduler.ForwardBackwardPriority,
            () => cache.GetOrMeasure(key, blocks, Options.RemeasureThroughput, MeasureOneMachine), ct);
        _logger.LogInformation("throughput {Throughput:F0} tok/s for {Blocks} block(s) ({Source} {Path})",
            info.Throughput, blocks, hit ? "cached in" : "measured, saved to", cache.Path);
        return info;
    }

    ThroughputInfo MeasureOneMachine()
    {
        if (Current is { } span) return ThroughputInfo.Measure(span.Stack);
        // Before a span is chosen the probe is block 0, whose files an auto-placed hub server may not have yet.
        Options.FetchBlocks?.Invoke(0, 1, CancellationToken.None).GetAwaiter().GetResult();
        using var probe = _checkpoint.LoadBlocks(0, 1, Options.WeightDtype, quant: Options.Quant);
        return ThroughputInfo.Measure(probe);
    }

    /// <summary>
    /// Moves to blocks [newStart, newStart + length): JOINING for the new span, load it, swap it in, ONLINE,
    /// OFFLINE for the blocks left behind, then end the old span's sessions and free its tensors. If loading
    /// fails the server announces its old span ONLINE again and keeps serving it.
    /// </summary>
    internal async Task MoveAsync(int newStart, string reason, CancellationToken ct)
    {
        var announcer = _announcer ?? throw new InvalidOperationException("only a server in a swarm moves");
        var old = Current ?? throw new InvalidOperationException("no span to move");
        int newEnd = newStart + old.Length;
        _logger.LogInformation("moving from blocks {OldStart}:{OldEnd} to {Start}:{End}: {Reason}", old.Start, old.End, newStart, newEnd, reason);
        await announcer.AnnounceAsync(newStart, newEnd, ServerState.Joining, ct);
        _logger.LogInformation("JOINING for blocks {Start}:{End}; loading them while still serving {OldStart}:{OldEnd}", newStart, newEnd, old.Start, old.End);
        ServedSpan next;
        try
        {
            if (Options.FetchBlocks is { } fetch) await fetch(newStart, newEnd, ct);
            next = await Task.Run(() => ServedSpan.Load(_checkpoint, Options, newStart, newEnd), ct);
        }
        catch (Exception e)
        {
            _logger.LogWarning("could not load blocks {Start}:{End} ({Message}); staying ONLINE for {OldStart}:{OldEnd}", newStart, newEnd, e.Message, old.Start, old.End);
            await announcer.AnnounceAsync(old.Start, old.End, ServerState.Online, CancellationToken.None);
            throw;
        }
        // Past the swap the move always completes, even when the server is stopping: a half-announced move would
        // leave the swarm believing in blocks nobody serves.
        Volatile.Write(ref _span, next);
        await announcer.AnnounceAsync(newStart, newEnd, ServerState.Online, CancellationToken.None);
        await announcer.RetireAsync(old.Start, old.End, CancellationToken.None);
        await old.RetireAsync(TimeSpan.FromSeconds(10));
        Interlocked.Increment(ref _moves);
        _logger.LogInformation("ONLINE for blocks {Start}:{End}; OFFLINE for {OldStart}:{OldEnd}, its sessions ended and its blocks were freed",
            newStart, newEnd, old.Start, old.End);
    }
}
