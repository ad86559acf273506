using Grpc.Core;
using PetalsSharp.Swarm;
using PetalsSharp.Wire;

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
        catch (Exception e) when (BusyFor(e) is { } retryAfter)
        {
            swarm.Pool.MarkBusy(hop.Server.Address, retryAfter, e);
            throw new HopFailure(hop, e);
        }
        catch (Exception e) when (IsServerFailure(e))
        {
            swarm.Pool.Ban(hop.Server.Address, e);
            throw new HopFailure(hop, e);
        }
    }

    /// <summary>Retry hint of a server that gives no <c>grpc-retry-pushback-ms</c> with its busy answer.</summary>
    internal static readonly TimeSpan DefaultBusyRetry = TimeSpan.FromSeconds(1);

    /// <summary>
    /// How long to route around a server that answered busy (RESOURCE_EXHAUSTED: its cache or request room is full);
    /// null for anything else. The server's hint is honoured within [50 ms, 60 s].
    /// </summary>
    public static TimeSpan? BusyFor(Exception e) => e is RpcException { StatusCode: StatusCode.ResourceExhausted } rpc
        ? RetryHint(rpc) ?? DefaultBusyRetry
        : null;

    /// <summary>
    /// The <c>grpc-retry-pushback-ms</c> hint of a busy answer: present when the server expects room again, absent when
    /// the request can never fit there (then waiting for that server is pointless).
    /// </summary>
    public static TimeSpan? RetryHint(Exception e) =>
        e is RpcException { StatusCode: StatusCode.ResourceExhausted } rpc && rpc.Trailers.GetValue(Protocol.RetryPushbackTrailer) is { } hint
        && long.TryParse(hint, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long ms)
            ? TimeSpan.FromMilliseconds(Math.Clamp(ms, 50, 60_000))
            : null;

    /// <summary>
    /// Runs <paramref name="run"/> on a chain over <c>[start, end)</c>; when a hop fails (its server is banned by
    /// then) the range is planned again and run again, up to <see cref="RemoteOptions.MaxRetries"/> times.
    /// </summary>
    public static async Task<T> RunAsync<T>(SwarmContext swarm, int start, int end, CancellationToken ct,
        Func<IReadOnlyList<ChainHop>, Task<T>> run)
    {
        var options = swarm.Pool.Options;
        var busy = new BusyClock();
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
            catch (HopFailure f) when (busy.Wait(f, options) is { } wait)
            {
                attempt--;   // load, not a failure: it does not use up a retry
                await Task.Delay(wait, ct).ConfigureAwait(false);
            }
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

/// <summary>
/// Time spent waiting on busy servers by one call: while it is under <see cref="RemoteOptions.BusyTimeout"/>, a busy
/// failure is waited out (its retry hint, with jitter so that waiting clients do not return in step) instead of
/// counting as a retry.
/// </summary>
internal sealed class BusyClock
{
    long _since;

    /// <summary>How long to wait before asking again, or null when <paramref name="failure"/> is not busy or the time is up.</summary>
    public TimeSpan? Wait(HopFailure failure, RemoteOptions options)
    {
        if (Retries.RetryHint(failure.InnerException!) is not { } hint) return null;
        long now = Environment.TickCount64;
        if (_since == 0) _since = now;
        if (now - _since >= options.BusyTimeout.TotalMilliseconds) return null;
        return hint * (0.5 + Random.Shared.NextDouble());
    }
}

/// <summary>A call to one server failed; carries which hop, so the caller can replace exactly it.</summary>
internal sealed class HopFailure(ChainHop hop, Exception inner) : Exception($"{hop}: {inner.Message}", inner)
{
    public ChainHop Hop { get; } = hop;
}
