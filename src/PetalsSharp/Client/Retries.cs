using Grpc.Core;
using PetalsSharp.Swarm;

namespace PetalsSharp.Client;

/// <summary>
/// How the client retries: which failures are the server's, how long to wait before retry n, and the retry loop of
/// forward/backward. Session failover (<see cref="RemoteSession"/>) replays history and so has its own loop, on the
/// same pieces; waiting for uncovered blocks is the planner's (<see cref="RemotePool.ReplanAsync"/>).
/// </summary>
internal static class Retries
{
    /// <summary>
    /// Runs one call; a failure bans its server and is rethrown as a <see cref="HopFailure"/>. Once
    /// <paramref name="ct"/> is cancelled, whatever the call throws is our cancellation, never the server's fault.
    /// </summary>
    public static async Task<T> Attempt<T>(SwarmContext swarm, ChainHop hop, Func<Task<T>> call, CancellationToken ct = default)
    {
        try
        {
            var result = await call().ConfigureAwait(false);
            swarm.Pool.Success(hop.Server.Address);
            return result;
        }
        catch (Exception) when (ct.IsCancellationRequested)
        {
            throw new OperationCanceledException(ct);
        }
        catch (Exception e) when (IsServerFailure(e))
        {
            swarm.Pool.Ban(hop.Server.Address, e);
            throw new HopFailure(hop, e);
        }
    }

    /// <summary>
    /// Runs <paramref name="run"/> on a chain over <c>[start, end)</c>; when a hop fails (its server is banned by
    /// then) the range is planned again and run again, up to <see cref="RemoteOptions.MaxRetries"/> times.
    /// </summary>
    public static async Task<T> RunAsync<T>(SwarmContext swarm, int start, int end, CancellationToken ct,
        Func<IReadOnlyList<ChainHop>, Task<T>> run)
    {
        var options = swarm.Pool.Options;
        for (int attempt = 0; ; attempt++)
        {
            ct.ThrowIfCancellationRequested();
            IReadOnlyList<ChainHop> chain;
            if (attempt == 0) chain = await swarm.PlanAsync(start, end, ct, forInference: false).ConfigureAwait(false);
            else
            {
                (chain, attempt) = await swarm.ReplanAsync(start, end, attempt, ct, forInference: false).ConfigureAwait(false);
                swarm.ReportRoute(chain);
            }
            try { return await run(chain).ConfigureAwait(false); }
            catch (HopFailure) when (attempt < options.MaxRetries)
            {
                await Task.Delay(Backoff(options, attempt + 1), ct).ConfigureAwait(false);
            }
            catch (HopFailure f)
            {
                throw new SwarmException($"blocks [{start}, {end}) failed after {options.MaxRetries} retries; last: {f.Hop}: {f.InnerException!.Message}", f.InnerException);
            }
        }
    }

    /// <summary>Immediate first retry, then exponential backoff capped at 10 s.</summary>
    public static TimeSpan Backoff(RemoteOptions options, int retry) => retry <= 1
        ? TimeSpan.Zero
        : TimeSpan.FromMilliseconds(Math.Min(options.MinBackoff.TotalMilliseconds * Math.Pow(2, retry - 2), 10_000));

    /// <summary>Anything a dead, slow or misbehaving server causes; not our own argument errors or user cancellation.</summary>
    public static bool IsServerFailure(Exception e) => e switch
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
