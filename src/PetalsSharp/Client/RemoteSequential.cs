using PetalsSharp.Models;
using PetalsSharp.Swarm;
using static TorchSharp.torch;

namespace PetalsSharp.Client;

/// <summary>
/// Blocks <c>[Start, End)</c> served by remote servers, as an <see cref="IBlockStack"/>. Forward is
/// differentiable (backward calls each server's Backward, hop by hop in reverse), sessions keep their KV caches
/// on the servers, and <c>remote[3..7]</c> gives a stack over just those blocks.
/// </summary>
public sealed class RemoteSequential : IBlockStack, IAsyncDisposable
{
    readonly SwarmContext _swarm;
    readonly bool _ownsPool;

    RemoteSequential(SwarmContext swarm, int start, int end, bool ownsPool)
    {
        _swarm = swarm;
        _ownsPool = ownsPool;
        Start = start;
        End = end;
    }

    RemotePool Pool => _swarm.Pool;
    public ModelConfig Config => Pool.Config;
    public int Start { get; }
    public int End { get; }
    public RemoteOptions Options => Pool.Options;

    /// <summary>What activation checks found so far (see <see cref="RemoteOptions.VerifyRate"/>).</summary>
    public VerificationStats Verification => Pool.Verification;

    /// <summary>Steps whose later hops got their input pushed from server to server (see <see cref="RemoteOptions.UseServerToServer"/>).</summary>
    public long PushedSteps => Pool.PushedSteps;

    /// <summary>Servers known to this stack.</summary>
    public IReadOnlyList<ServerConnection> Servers => Pool.Servers;

    /// <summary>
    /// Connects to a static list of servers (<c>HOST:PORT</c>) that together cover every block. With a local
    /// checkpoint, servers whose weights differ from it are refused.
    /// </summary>
    public static async Task<RemoteSequential> ConnectAsync(ModelConfig config, IEnumerable<string> peers,
        RemoteOptions? options = null, Checkpoint? localCheckpoint = null, CancellationToken cancellationToken = default)
    {
        var pool = await RemotePool.ConnectAsync(config, peers, options ?? new RemoteOptions(), localCheckpoint, cancellationToken).ConfigureAwait(false);
        var stack = new RemoteSequential(new SwarmContext(pool), 0, config.NumLayers, ownsPool: true);
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
        var dht = await SwarmReader.JoinAsClientAsync(initialPeers, options.SwarmKey, cancellationToken, options.JoinTimeout,
            options.Logger, options.Tls).ConfigureAwait(false);
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
            var pool = await RemotePool.ConnectAsync(config, online.Select(s => s.Dial(tls: true)), options, localCheckpoint, cancellationToken, Discover).ConfigureAwait(false);
            pool.Own(dht);
            pool.Learn(online);
            var stack = new RemoteSequential(new SwarmContext(pool), 0, config.NumLayers, ownsPool: true);
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
            return new RemoteSequential(_swarm, Start + offset, Start + offset + length, ownsPool: false);
        }
    }

    /// <summary>
    /// A view of these blocks that plans its routes with <paramref name="routing"/> (say, one request's server
    /// lists and route callback). It shares the servers and owns nothing: disposing it closes no connection.
    /// </summary>
    public RemoteSequential WithRouting(RouteOverrides routing) => new(new SwarmContext(Pool, routing), Start, End, ownsPool: false);

    /// <summary>The chain of servers this stack would use now for inference (minimum latency).</summary>
    public IReadOnlyList<ChainHop> Chain(long? cacheTokensNeeded = null) => Chain(_swarm, cacheTokensNeeded);

    IReadOnlyList<ChainHop> Chain(SwarmContext swarm, long? cacheTokensNeeded)
    {
        var chain = swarm.Plan(Start, End, cacheTokensNeeded);
        swarm.ReportRoute(chain);
        return chain;
    }

    /// <summary>Re-measures the round trip to every server (routing uses a moving average of these).</summary>
    public Task PingAsync(CancellationToken cancellationToken = default) => Pool.PingAllAsync(cancellationToken);

    /// <summary>
    /// The blocking form of <see cref="ForwardAsync"/>, for synchronous callers (training loops). Each hop's calls
    /// run on the thread pool while this thread waits; the autograd nodes are recorded on this thread, under its
    /// grad mode and dispose scope.
    /// </summary>
    public Tensor Forward(Tensor hidden, ForwardOptions? options = null)
    {
        var forward = ForwardCoreAsync(hidden, options, blocking: true, CancellationToken.None);
        // Blocking mode never awaits an unfinished task, so the work is already done here.
        return forward.IsCompleted ? forward.GetAwaiter().GetResult() : throw new InvalidOperationException("blocking forward did not complete");
    }

    /// <summary>
    /// A cache-free forward <c>[B,T,H] → [B,T,H]</c> through a throughput-spreading chain, differentiable with
    /// respect to <paramref name="hidden"/> and the deep prompts: backward calls each hop's servers again.
    /// </summary>
    public ValueTask<Tensor> ForwardAsync(Tensor hidden, ForwardOptions? options = null, CancellationToken cancellationToken = default) =>
        ForwardCoreAsync(hidden, options, blocking: false, cancellationToken);

    async ValueTask<Tensor> ForwardCoreAsync(Tensor hidden, ForwardOptions? options, bool blocking, CancellationToken ct)
    {
        StepChecks.Hidden(hidden, Config);                                              // [B, T, H]
        var prompts = options?.Prompts;                                                 // [blocks, B or 1, P, H]
        if (prompts is not null) BlockPrompts.Check(prompts, End - Start, hidden);
        // Grad mode is per thread and an await may resume on another one: record hops under the caller's mode.
        bool grad = is_grad_enabled();
        var chain = _swarm.Plan(Start, End, forInference: false);
        _swarm.ReportRoute(chain);
        var h = hidden;                                                                 // [B, T, H]
        foreach (var hop in chain)
        {
            var p = prompts?.narrow(0, hop.Start - Start, hop.End - hop.Start);         // [hop blocks, B or 1, P, H]
            using var input = h.detach();                                               // [B, T, H]
            using var hopPrompts = p?.detach();
            Task<Tensor> Call() => RemoteRange.ForwardAsync(_swarm, hop.Start, hop.End, input, hopPrompts, options?.LeftPadding, ct);
            var output = blocking ? Run(Call) : await Call().ConfigureAwait(false);    // [B, T, H]
            using (enable_grad(grad)) h = Record(h, p, output, new RemoteHop(_swarm, hop.Start, hop.End, options?.LeftPadding));
            options?.OnBlockOutput?.Invoke(hop.End - 1, h.detach().clone().DetachFromDisposeScope());
        }
        return h;
    }

    /// <summary>
    /// The hop's output, as an autograd node over <paramref name="input"/> (and the prompts) when a gradient can flow
    /// through it; the servers already computed it, so the node's forward only hands it over.
    /// </summary>
    static Tensor Record(Tensor input, Tensor? prompts, Tensor output, RemoteHop hop) => (input.requires_grad, prompts) switch
    {
        (_, { requires_grad: true }) => RemoteHopFunction.apply(input, prompts, hop, new HopOutput(output)),
        (true, _) when prompts is null => RemoteHopFunction.apply(input, hop, new HopOutput(output)),
        (true, _) => RemoteHopFunction.apply(input, prompts.detach(), hop, new HopOutput(output)),
        _ => output,
    };

    public IBlockSession OpenSession(SessionOptions options)
    {
        // A session's own routing (one request's) overrides this view's field by field: a request that only watches
        // the route keeps the view's server lists and adapter.
        var swarm = options.Routing is null ? _swarm : new SwarmContext(Pool, options.Routing.Over(_swarm.Routing));
        return new RemoteSession(swarm, Chain(swarm, (long)options.Batch * options.MaxLength), options);
    }

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
        while (Pool.BackwardErrors.TryDequeue(out var e)) errors.Add(e);
        if (errors.Count == 1) throw errors[0];
        if (errors.Count > 1) throw new AggregateException("remote backward failed", errors);
    }

    /// <summary>
    /// Runs async gRPC work from a synchronous surface (blocking Forward, autograd's backward) on the thread pool, so
    /// no caller's synchronization context can deadlock it.
    /// </summary>
    internal static T Run<T>(Func<Task<T>> work) => Task.Run(work).GetAwaiter().GetResult();

    public void Dispose()
    {
        if (_ownsPool) Pool.Dispose();
    }

    /// <summary>Like <see cref="Dispose"/>, but awaits the client's DHT node and background refresh instead of blocking on them.</summary>
    public ValueTask DisposeAsync() => _ownsPool ? Pool.DisposeAsync() : ValueTask.CompletedTask;
}

/// <summary>What the autograd function needs to call a hop again in backward.</summary>
internal sealed record RemoteHop(SwarmContext Swarm, int Start, int End, IReadOnlyList<int>? LeftPadding);

/// <summary>A hop's output computed before its autograd node was recorded (forward cannot await the servers).</summary>
internal sealed record HopOutput(Tensor Value);

/// <summary>
/// One hop as an autograd node: forward hands over the output the servers' Forward already gave, backward calls
/// their Backward. Inputs are <c>(hidden, hop, output)</c> or <c>(hidden, prompts, hop, output)</c> with deep prompts
/// of the hop's blocks.
/// </summary>
internal sealed class RemoteHopFunction : TorchSharp.torch.autograd.SingleTensorFunction<RemoteHopFunction>
{
    public override string Name => "RemoteHop";

    public override Tensor forward(TorchSharp.torch.autograd.AutogradContext ctx, params object[] vars)
    {
        var input = (Tensor)vars[0];                                                    // [B, T, H]
        var prompts = vars.Length == 4 ? (Tensor)vars[1] : null;                        // [hop blocks, B or 1, P, H]
        var hop = (RemoteHop)vars[^2];
        ctx.save_for_backward(prompts is null ? [input.detach()] : [input.detach(), prompts.detach()]);
        ctx.save_data("hop", hop);
        return ((HopOutput)vars[^1]).Value;                                             // [B, T, H]
    }

    public override List<Tensor> backward(TorchSharp.torch.autograd.AutogradContext ctx, Tensor gradOutput)
    {
        var saved = ctx.get_saved_variables();
        var input = saved[0];
        var prompts = saved.Count > 1 ? saved[1] : null;
        var hop = (RemoteHop)ctx.get_data("hop");
        // libtorch calls backward synchronously from its own engine: there is nothing to await here, so this blocks.
        try
        {
            var (grad, gradPrompts) = RemoteSequential.Run(() => RemoteRange.BackwardAsync(hop.Swarm, hop.Start, hop.End, input, prompts,
                gradOutput.contiguous(), hop.LeftPadding, CancellationToken.None));
            return prompts is null ? [grad, null!, null!] : [grad, gradPrompts!, null!, null!];
        }
        catch (Exception e)
        {
            // An exception thrown here would cross libtorch's native callback and kill the process, so the
            // failure is recorded and surfaced by RemoteSequential.Backward / ThrowIfBackwardFailed, and the
            // gradient is NaN so that nothing can silently train on it.
            hop.Swarm.Pool.BackwardErrors.Enqueue(new SwarmException($"backward through blocks [{hop.Start}, {hop.End}) failed: {e.Message}", e));
            return prompts is null
                ? [full_like(input, float.NaN), null!, null!]
                : [full_like(input, float.NaN), full_like(prompts, float.NaN), null!, null!];
        }
    }
}
