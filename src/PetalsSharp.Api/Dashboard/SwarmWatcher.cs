using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using PetalsSharp.Dht;
using PetalsSharp.Swarm;

namespace PetalsSharp.Api.Dashboard;

/// <summary>
/// Reads the swarm from the DHT every <see cref="DashboardSettings.RefreshPeriod"/> through a client-mode DHT node
/// and keeps the latest <see cref="SwarmView"/>. A failed read keeps the last view and reports the error in it.
/// </summary>
public sealed class SwarmWatcher : IAsyncDisposable
{
    /// <summary>A read that takes longer than this fails (and the next one is tried).</summary>
    static readonly TimeSpan ReadTimeout = TimeSpan.FromSeconds(15);

    readonly DhtNode _dht;
    readonly DashboardSettings _settings;
    readonly ILogger _logger;
    readonly CancellationTokenSource _stop = new();
    readonly Task _loop;
    SwarmView _current;

    SwarmWatcher(DhtNode dht, DashboardSettings settings, ILogger logger)
    {
        _dht = dht;
        _settings = settings;
        _logger = logger;
        _current = SwarmView.Empty(settings.MinCoverage);
        _loop = Task.Run(LoopAsync);
    }

    /// <summary>The latest view (never null; empty before the first read).</summary>
    public SwarmView Current => Volatile.Read(ref _current);

    /// <summary>Joins the swarm through <paramref name="initialPeers"/> as a DHT client and starts reading it.</summary>
    public static async Task<SwarmWatcher> StartAsync(IEnumerable<string> initialPeers, SwarmKey? swarmKey, DashboardSettings settings,
        ILogger? logger = null, CancellationToken ct = default)
    {
        if (settings.MinCoverage < 1) throw new ArgumentException($"min coverage {settings.MinCoverage} must be at least 1");
        if (settings.RefreshPeriod < TimeSpan.FromMilliseconds(100)) throw new ArgumentException("refresh period must be at least 0.1 s");
        var dht = await SwarmReader.JoinAsClientAsync(initialPeers, swarmKey, ct, tls: settings.Tls).ConfigureAwait(false);
        return new SwarmWatcher(dht, settings, logger ?? NullLogger.Instance);
    }

    async Task LoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            try
            {
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
                timeout.CancelAfter(ReadTimeout);
                var models = await ReadAsync(timeout.Token).ConfigureAwait(false);
                Volatile.Write(ref _current, SwarmViewBuilder.Build(models, Current, _settings, DateTimeOffset.UtcNow));
            }
            catch (OperationCanceledException) when (_stop.IsCancellationRequested) { break; }
            catch (Exception e)
            {
                _logger.LogWarning("reading the swarm failed: {Message}", e.Message);
                var failed = Current with { Error = $"reading the DHT failed: {e.Message}" };
                Volatile.Write(ref _current, failed with
                {
                    Warnings = [.. failed.Warnings.Where(w => w.Kind != "read_failed"), new SwarmWarning("read_failed", "error", "", failed.Error!, [], null)],
                });
            }
            try { await Task.Delay(_settings.RefreshPeriod, _stop.Token).ConfigureAwait(false); }
            catch (OperationCanceledException) { break; }
        }
    }

    async Task<IReadOnlyList<ModelRecords>> ReadAsync(CancellationToken ct)
    {
        var index = await SwarmReader.ReadModelsAsync(_dht, ct).ConfigureAwait(false);
        var reads = index.Select(async m => new ModelRecords(m.DhtPrefix, m.NumBlocks, m.Repository, m.ModelType,
            await SwarmReader.ReadAsync(_dht, m.DhtPrefix, m.NumBlocks, ct).ConfigureAwait(false)));
        return await Task.WhenAll(reads).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        await _loop.ConfigureAwait(false);
        await _dht.DisposeAsync().ConfigureAwait(false);
        _stop.Dispose();
    }
}
