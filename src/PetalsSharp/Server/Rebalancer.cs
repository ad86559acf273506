using Microsoft.Extensions.Logging;
using PetalsSharp.Dht;
using PetalsSharp.Swarm;

namespace PetalsSharp.Server;

/// <summary>
/// Every rebalance period (±50% jitter, so servers do not all check and move in the same instant) an
/// auto-placed server reads the swarm and asks <see cref="BlockSelection.ShouldMove(SpanLoad, SwarmSnapshot, double)"/>
/// whether moving would raise the swarm's bottleneck enough; if so it moves.
/// </summary>
internal sealed class Rebalancer : IAsyncDisposable
{
    readonly BlockServer _server;
    readonly DhtNode _dht;
    readonly ILogger _logger;
    readonly CancellationTokenSource _stop = new();
    Task _loop = Task.CompletedTask;

    Rebalancer(BlockServer server, DhtNode dht, ILogger logger)
    {
        _server = server;
        _dht = dht;
        _logger = logger;
    }

    public static Rebalancer Start(BlockServer server, DhtNode dht, ILogger logger)
    {
        var r = new Rebalancer(server, dht, logger);
        r._loop = Task.Run(r.LoopAsync);
        return r;
    }

    async Task LoopAsync()
    {
        var period = _server.Options.RebalancePeriod;
        while (!_stop.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(period * (0.5 + Random.Shared.NextDouble()), _stop.Token);
                await CheckAsync(_stop.Token);
            }
            catch (OperationCanceledException) when (_stop.IsCancellationRequested) { return; }
            catch (Exception e)
            {
                _logger.LogWarning("balance check failed (will retry): {Message}", e.Message);
            }
        }
    }

    /// <summary>One balance check; moves when it pays off.</summary>
    async Task CheckAsync(CancellationToken ct)
    {
        var snapshot = await SwarmReader.ReadAsync(_dht, _server.Options.ResolvedDhtPrefix, _server.Config.NumLayers, ct);
        var self = new SpanLoad(_dht.Id.ToString(), _server.Start, _server.End, _server.Throughput?.Throughput ?? 0);
        var decision = BlockSelection.ShouldMove(self, snapshot, _server.Options.BalanceQuality);
        if (!decision.Move)
        {
            _logger.LogDebug("staying on blocks {Start}:{End}: {Reason}", self.Start, self.End, decision.Reason);
            return;
        }
        await _server.MoveAsync(decision.NewStart, decision.Reason, ct);
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        try { await _loop; }
        catch (OperationCanceledException) { }
        _stop.Dispose();
    }
}
