using Grpc.Core;
using PetalsSharp.Swarm;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace PetalsSharp.Client;

/// <summary>
/// Forward and backward over a block range with failover: a failing server is banned and the range is re-planned
/// (possibly over several servers) and run again, up to <see cref="RemoteOptions.MaxRetries"/> times. Backward is
/// stateless on servers, so a replacement needs nothing but the range's input.
/// </summary>
internal static class RemoteRange
{
    /// <summary>Forward through blocks <c>[start, end)</c> with deep prompts <c>[end-start, B or 1, P, H]</c> (or null).</summary>
    public static Task<Tensor> ForwardAsync(RemotePool pool, int start, int end, Tensor input, Tensor? prompts,
        IReadOnlyList<int>? leftPadding, CancellationToken ct, RouteOverrides? routing = null) =>
        WithRetriesAsync(pool, start, end, ct, routing, async chain =>
        {
            var h = input;
            foreach (var hop in chain)
            {
                var p = Slice(prompts, start, hop);
                var next = await Attempt(pool, hop, () => RemoteCalls.ForwardAsync(pool.Get(hop.Server.Address), hop, h, p, leftPadding, RouteOverrides.Apply(routing, pool.Options), ct));
                if (!ReferenceEquals(h, input)) h.Dispose();
                h = next;
            }
            return h;
        });

    /// <summary>Gradients of the range's input and (when given) of its deep prompts <c>[end-start, B or 1, P, H]</c>.</summary>
    public static Task<(Tensor GradInput, Tensor? GradPrompts)> BackwardAsync(RemotePool pool, int start, int end, Tensor input,
        Tensor? prompts, Tensor gradOutput, IReadOnlyList<int>? leftPadding, CancellationToken ct, RouteOverrides? routing = null) =>
        WithRetriesAsync(pool, start, end, ct, routing, async chain =>
        {
            // Several servers for one range: recompute their inputs first, then go back through them in reverse.
            var inputs = new List<Tensor> { input };
            for (int i = 0; i + 1 < chain.Count; i++)
            {
                var p = Slice(prompts, start, chain[i]);
                inputs.Add(await Attempt(pool, chain[i], () => RemoteCalls.ForwardAsync(pool.Get(chain[i].Server.Address), chain[i], inputs[i], p, leftPadding, RouteOverrides.Apply(routing, pool.Options), ct)));
            }
            var grad = gradOutput;
            var promptGrads = new Tensor?[chain.Count];
            for (int i = chain.Count - 1; i >= 0; i--)
            {
                var hop = chain[i];
                var p = Slice(prompts, start, hop);
                (grad, promptGrads[i]) = await Attempt(pool, hop, () => RemoteCalls.BackwardAsync(pool.Get(hop.Server.Address), hop, inputs[i], p, grad, leftPadding, RouteOverrides.Apply(routing, pool.Options), ct));
            }
            return (grad, prompts is null ? null : promptGrads.Length == 1 ? promptGrads[0] : cat(promptGrads.Select(g => g!).ToList(), 0));
        });

    /// <summary>The hop's blocks out of a range's prompts (null stays null).</summary>
    static Tensor? Slice(Tensor? prompts, int start, ChainHop hop) =>
        prompts?.narrow(0, hop.Start - start, hop.End - hop.Start);

    /// <summary>Runs one call; a failure bans its server and is rethrown as a <see cref="HopFailure"/>.</summary>
    internal static async Task<T> Attempt<T>(RemotePool pool, ChainHop hop, Func<Task<T>> call)
    {
        try
        {
            var result = await call().ConfigureAwait(false);
            pool.Success(hop.Server.Address);
            return result;
        }
        catch (Exception e) when (IsServerFailure(e))
        {
            pool.Ban(hop.Server.Address);
            throw new HopFailure(hop, e);
        }
    }

    static async Task<T> WithRetriesAsync<T>(RemotePool pool, int start, int end, CancellationToken ct, RouteOverrides? routing,
        Func<IReadOnlyList<ChainHop>, Task<T>> run)
    {
        for (int attempt = 0; ; attempt++)
        {
            IReadOnlyList<ChainHop> chain;
            try { chain = await pool.PlanAsync(start, end, ct, forInference: false, routing: routing).ConfigureAwait(false); }
            catch (SwarmException) when (attempt > 0 && attempt < pool.Options.MaxRetries)
            {
                // After a failure the blocks may be uncovered for a while (a server is moving in): wait for the swarm.
                await Task.Delay(Backoff(pool.Options, attempt + 1), ct).ConfigureAwait(false);
                continue;
            }
            if (attempt > 0) pool.OnRoute(routing)?.Invoke(ChainPlanner.Describe(chain));
            try { return await run(chain).ConfigureAwait(false); }
            catch (HopFailure f) when (attempt < pool.Options.MaxRetries)
            {
                await Task.Delay(Backoff(pool.Options, attempt + 1), ct).ConfigureAwait(false);
                _ = f;
            }
            catch (HopFailure f)
            {
                throw new SwarmException($"blocks [{start}, {end}) failed after {pool.Options.MaxRetries} retries; last: {f.Hop}: {f.InnerException!.Message}", f.InnerException);
            }
        }
    }

    /// <summary>Immediate first retry, then exponential backoff capped at 10 s.</summary>
    internal static TimeSpan Backoff(RemoteOptions options, int retry) => retry <= 1
        ? TimeSpan.Zero
        : TimeSpan.FromMilliseconds(Math.Min(options.MinBackoff.TotalMilliseconds * Math.Pow(2, retry - 2), 10_000));

    /// <summary>Anything a dead, slow or misbehaving server causes; not our own argument errors or user cancellation.</summary>
    internal static bool IsServerFailure(Exception e) => e switch
    {
        // INVALID_ARGUMENT says our request is wrong: every server would refuse it, so banning them all helps nobody.
        RpcException { StatusCode: StatusCode.InvalidArgument } => false,
        RpcException rpc => rpc.StatusCode != StatusCode.Cancelled || rpc.InnerException is not OperationCanceledException,
        SwarmException or HttpRequestException or IOException or TimeoutException => true,
        PetalsSharp.Wire.WireException => true,
        OperationCanceledException => false,
        _ => false,
    };
}

/// <summary>A call to one server failed; carries which hop, so the caller can replace exactly it.</summary>
internal sealed class HopFailure(ChainHop hop, Exception inner) : Exception($"{hop}: {inner.Message}", inner)
{
    public ChainHop Hop { get; } = hop;
}
