using PetalsSharp.Models;
using PetalsSharp.Swarm;
using static TorchSharp.torch;

namespace PetalsSharp.Client;

/// <summary>
/// Blocks <c>[Start, End)</c> served by remote servers, as an <see cref="IBlockStack"/>. Forward is
/// differentiable (backward calls each server's Backward, hop by hop in reverse), sessions keep their KV caches
/// on the servers, and <c>remote[3..7]</c> gives a stack over just those blocks.
/// </summary>
public sealed class RemoteSequential : IBlockStack
{
    readonly RemotePool _pool;
    readonly bool _ownsPool;
    readonly RouteOverrides? _routing;

    RemoteSequential(RemotePool pool, int start, int end, bool ownsPool, RouteOverrides? routing = null)
    {
        _routing = routing;
        _pool = pool;
        _ownsPool = ownsPool;
        Start = start;
        End = end;
    }

    public ModelConfig Config => _pool.Config;
    public int Start { get; }
    public int End { get; }
    public RemoteOptions Options => _pool.Options;

    /// <summary>Servers known to this stack.</summary>
    public IReadOnlyList<ServerConnection> Servers => _pool.Servers;

    /// <summary>
    /// Connects to a static list of servers (<c>HOST:PORT</c>) that together cover every block. With a local
    /// checkpoint, servers whose weights differ from it are refused.
    /// </summary>
    public static async Task<RemoteSequential> ConnectAsync(ModelConfig config, IEnumerable<string> peers,
        RemoteOptions? options = null, Checkpoint? localCheckpoint = null, CancellationToken cancellationToken = default)
    {
        var pool = await RemotePool.ConnectAsync(config, peers, options ?? new RemoteOptions(), localCheckpoint, cancellationToken).ConfigureAwait(false);
        var stack = new RemoteSequential(pool, 0, config.NumLayers, ownsPool: true);
        stack.Chain();   // fail now, not at the first step, when the servers leave a gap
        return stack;
    }

    /// <summary>
    /// Finds the model's servers through the DHT (<paramref name="initialPeers"/> are DHT nodes: "HOST:PORT" or
    /// "HOST:PORT/ID") and connects to the ONLINE ones. The client's DHT node lives as long as the stack.
    /// </summary>
    public static async Task<RemoteSequential> ConnectViaDhtAsync(ModelConfig config, string dhtPrefix, IEnumerable<string> initialPeers,
        RemoteOptions? options = null, Checkpoint? localCheckpoint = null, CancellationToken cancellationToken = default)
    {
        options ??= new RemoteOptions();
        var dht = await SwarmReader.JoinAsClientAsync(initialPeers, options.SwarmKey, cancellationToken).ConfigureAwait(false);
        try
        {
            async Task<IReadOnlyList<ServerInfo>> Discover(CancellationToken ct) =>
                (await SwarmReader.ReadAsync(dht, dhtPrefix, config.NumLayers, ct).ConfigureAwait(false)).Online;
            var snapshot = await SwarmReader.ReadAsync(dht, dhtPrefix, config.NumLayers, cancellationToken).ConfigureAwait(false);
            var online = snapshot.Online;
            if (online.Count == 0)
                throw new SwarmException($"no ONLINE server of '{dhtPrefix}' found in the DHT ({snapshot.Servers.Count} known)");
            var uncovered = snapshot.Uncovered();
            if (uncovered.Count > 0)
                throw new SwarmException($"no ONLINE server holds block(s) {string.Join(", ", uncovered)} of '{dhtPrefix}'");
            var pool = await RemotePool.ConnectAsync(config, online.Select(s => s.Address), options, localCheckpoint, cancellationToken, Discover).ConfigureAwait(false);
            pool.Own(dht);
            pool.Learn(online);
            var stack = new RemoteSequential(pool, 0, config.NumLayers, ownsPool: true);
            stack.Chain();
            return stack;
        }
        catch
        {
            await dht.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>A stack over blocks <paramref name="range"/> that shares these servers.</summary>
    public RemoteSequential this[Range range]
    {
        get
        {
            var (offset, length) = range.GetOffsetAndLength(End - Start);
            if (length <= 0) throw new ArgumentOutOfRangeException(nameof(range), "a slice needs at least one block");
            return new RemoteSequential(_pool, Start + offset, Start + offset + length, ownsPool: false, _routing);
        }
    }

    /// <summary>
    /// A view of these blocks that plans its routes with <paramref name="routing"/> (say, one request's server
    /// lists and route callback). It shares the servers and owns nothing: disposing it closes no connection.
    /// </summary>
    public RemoteSequential WithRouting(RouteOverrides routing) => new(_pool, Start, End, ownsPool: false, routing);

    /// <summary>The chain of servers this stack would use now for inference (minimum latency).</summary>
    public IReadOnlyList<ChainHop> Chain(long? cacheTokensNeeded = null)
    {
        var chain = _pool.Plan(Start, End, cacheTokensNeeded, routing: _routing);
        _pool.OnRoute(_routing)?.Invoke(ChainPlanner.Describe(chain));
        return chain;
    }

    /// <summary>Re-measures the round trip to every server (routing uses a moving average of these).</summary>
    public Task PingAsync(CancellationToken cancellationToken = default) => _pool.PingAllAsync(cancellationToken);

    public Tensor Forward(Tensor hidden, ForwardOptions? options = null)
    {
        LocalBlockStack.CheckHidden(hidden, Config);
        var prompts = options?.Prompts;
        if (prompts is not null) BlockPrompts.Check(prompts, End - Start, hidden);
        var h = hidden;
        var chain = _pool.Plan(Start, End, forInference: false, routing: _routing);
        _pool.OnRoute(_routing)?.Invoke(ChainPlanner.Describe(chain));
        foreach (var hop in chain)
        {
            var p = prompts?.narrow(0, hop.Start - Start, hop.End - hop.Start);     // [hop blocks, B or 1, P, H]
            var remoteHop = new RemoteHop(_pool, hop.Start, hop.End, options?.LeftPadding, _routing);
            var input = h;
            h = (h.requires_grad, p) switch
            {
                (_, { requires_grad: true }) => RemoteHopFunction.apply(h, p, remoteHop),
                (true, _) when p is null => RemoteHopFunction.apply(h, remoteHop),
                (true, _) => RemoteHopFunction.apply(h, p.detach(), remoteHop),
                _ => Run(() => RemoteRange.ForwardAsync(_pool, hop.Start, hop.End, input, p?.detach(), options?.LeftPadding, CancellationToken.None, _routing)),
            };
            options?.OnBlockOutput?.Invoke(hop.End - 1, h.detach().clone().DetachFromDisposeScope());
        }
        return h;
    }

    public IBlockSession OpenSession(SessionOptions options) =>
        new RemoteSession(_pool, Chain((long)options.Batch * options.MaxLength), options, _routing);

    /// <summary>
    /// <c>loss.backward()</c>, then throws if a remote hop's Backward failed. Prefer this to a bare
    /// <c>backward()</c>: libtorch cannot carry a .NET exception out of an autograd node, so a failed hop yields
    /// NaN gradients and is reported here.
    /// </summary>
    public void Backward(Tensor loss)
    {
        loss.backward();
        ThrowIfBackwardFailed();
    }

    /// <summary>Throws the failures of remote Backward calls since the last check, if any.</summary>
    public void ThrowIfBackwardFailed()
    {
        var errors = new List<Exception>();
        while (_pool.BackwardErrors.TryDequeue(out var e)) errors.Add(e);
        if (errors.Count == 1) throw errors[0];
        if (errors.Count > 1) throw new AggregateException("remote backward failed", errors);
    }

    /// <summary>Runs async gRPC work from the synchronous IBlockStack/autograd surface without capturing a context.</summary>
    internal static T Run<T>(Func<Task<T>> work) => Task.Run(work).GetAwaiter().GetResult();

    public void Dispose()
    {
        if (_ownsPool) _pool.Dispose();
    }
}

/// <summary>What the autograd function needs to call a hop again in backward.</summary>
internal sealed record RemoteHop(RemotePool Pool, int Start, int End, IReadOnlyList<int>? LeftPadding, RouteOverrides? Routing = null);

/// <summary>
/// One hop as an autograd node: forward calls the server's Forward, backward its Backward. Inputs are
/// <c>(hidden, hop)</c> or <c>(hidden, prompts, hop)</c> with deep prompts of the hop's blocks.
/// </summary>
internal sealed class RemoteHopFunction : TorchSharp.torch.autograd.SingleTensorFunction<RemoteHopFunction>
{
    public override string Name => "RemoteHop";

    public override Tensor forward(TorchSharp.torch.autograd.AutogradContext ctx, params object[] vars)
    {
        var input = (Tensor)vars[0];
        var prompts = vars.Length == 3 ? (Tensor)vars[1] : null;
        var hop = (RemoteHop)vars[^1];
        ctx.save_for_backward(prompts is null ? [input.detach()] : [input.detach(), prompts.detach()]);
        ctx.save_data("hop", hop);
        return RemoteSequential.Run(() => RemoteRange.ForwardAsync(hop.Pool, hop.Start, hop.End, input.detach(), prompts?.detach(), hop.LeftPadding, CancellationToken.None, hop.Routing));
    }

    public override List<Tensor> backward(TorchSharp.torch.autograd.AutogradContext ctx, Tensor gradOutput)
    {
        var saved = ctx.get_saved_variables();
        var input = saved[0];
        var prompts = saved.Count > 1 ? saved[1] : null;
        var hop = (RemoteHop)ctx.get_data("hop");
        try
        {
            var (grad, gradPrompts) = RemoteSequential.Run(() => RemoteRange.BackwardAsync(hop.Pool, hop.Start, hop.End, input, prompts,
                gradOutput.contiguous(), hop.LeftPadding, CancellationToken.None, hop.Routing));
            return prompts is null ? [grad, null!] : [grad, gradPrompts!, null!];
        }
        catch (Exception e)
        {
            // An exception thrown here would cross libtorch's native callback and kill the process, so the
            // failure is recorded and surfaced by RemoteSequential.Backward / ThrowIfBackwardFailed, and the
            // gradient is NaN so that nothing can silently train on it.
            hop.Pool.BackwardErrors.Enqueue(new SwarmException($"backward through blocks [{hop.Start}, {hop.End}) failed: {e.Message}", e));
            return prompts is null
                ? [full_like(input, float.NaN), null!]
                : [full_like(input, float.NaN), full_like(prompts, float.NaN), null!];
        }
    }
}
