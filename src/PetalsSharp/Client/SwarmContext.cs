using PetalsSharp.Models;
using PetalsSharp.Swarm;

namespace PetalsSharp.Client;

/// <summary>
/// What every remote call needs: the servers (<see cref="RemotePool"/>) and the routing of the view or session making
/// the call (one request's server lists, adapter and route callback), so the two travel together.
/// </summary>
internal sealed record SwarmContext(RemotePool Pool, RouteOverrides? Routing = null)
{
    public ModelConfig Config => Pool.Config;

    /// <summary>The options calls under this routing use: the pool's, with the routing's adapter when it names one.</summary>
    public RemoteOptions Options => string.IsNullOrEmpty(Routing?.Adapter) ? Pool.Options : Pool.Options with { ActiveAdapter = Routing.Adapter };

    /// <summary>The connection of <paramref name="hop"/>'s server.</summary>
    public ServerConnection Server(ChainHop hop) => Pool.Get(hop.Server.Address);

    /// <summary>Sends the chain's <c>route: ...</c> line to the options' callback and to the routing's.</summary>
    public void ReportRoute(IEnumerable<ChainHop> chain)
    {
        var onOptions = Pool.Options.OnRoute;
        var onRouting = Routing?.OnRoute;
        if (onOptions is null && onRouting is null) return;
        var line = ChainPlanner.Describe(chain);
        onOptions?.Invoke(line);
        onRouting?.Invoke(line);
    }

    /// <inheritdoc cref="RemotePool.Plan"/>
    public IReadOnlyList<ChainHop> Plan(int start, int end, long? cacheTokensNeeded = null, bool forInference = true) =>
        Pool.Plan(start, end, cacheTokensNeeded, forInference, Routing);

    /// <inheritdoc cref="RemotePool.PlanAsync"/>
    public Task<IReadOnlyList<ChainHop>> PlanAsync(int start, int end, CancellationToken ct, long? cacheTokensNeeded = null,
        bool forInference = true) => Pool.PlanAsync(start, end, ct, cacheTokensNeeded, forInference, Routing);

    /// <inheritdoc cref="RemotePool.ReplanAsync"/>
    public Task<(IReadOnlyList<ChainHop> Chain, int Retry)> ReplanAsync(int start, int end, int retry, CancellationToken ct,
        long? cacheTokensNeeded = null, bool forInference = true) =>
        Pool.ReplanAsync(start, end, retry, ct, cacheTokensNeeded, forInference, Routing);
}
