using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;
using PetalsSharp.Models;
using PetalsSharp.Swarm;
using PetalsSharp.Wire.V1;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace PetalsSharp.Client;

/// <summary>
/// Catches servers that return wrong activations. A sampled hop's output is recomputed by a second server that holds
/// the same blocks, from the hop's whole input history (a cache-free Forward), and the two are compared within what
/// both servers' announced precision allows. When they disagree a third server decides: the one the other two
/// outvote is banned for the pool's lifetime. A hop no second server covers cannot be checked (a swarm with one
/// server per span), and two colluding servers agreeing on a lie pass: see docs/security.md.
/// </summary>
internal static class StepVerifier
{
    /// <summary>The outcome for the checked hop's server.</summary>
    public enum Verdict { Agreed, Unverifiable, Inconclusive, OtherLied, HopLied }

    /// <summary>
    /// Relative error (‖a − b‖ / ‖b‖ over the step's rows) one server's announced precision may cause in a span's
    /// output: a few f32 ulps summed over blocks for exact f32 weights, far more for 16-bit and quantized ones.
    /// A server that serves wrong weights (corrupted, or a different model under this name) misses by O(1).
    /// </summary>
    public static double Precision(InfoReply info) => ServerInfo.ReadQuant(info.Quant) switch
    {
        "none" => info.WeightsDtype.ToLowerInvariant() switch
        {
            "float32" or "f32" => 1e-3,
            "float16" or "f16" => 1e-2,
            _ => 3e-2,   // bfloat16, or a dtype this client does not know
        },
        "int8" => 0.1,
        _ => 0.3,        // nf4 and unknown formats
    };

    /// <summary>Extra error from the hop's reply compression (the check itself asks for none).</summary>
    public static double Precision(Compression compression) => compression switch
    {
        Compression.None => 0,
        Compression.Float16 => 1e-3,
        Compression.Bfloat16 => 1e-2,
        _ => 3e-2,
    };

    /// <summary>
    /// The step's rows from the hop's shadow session on <paramref name="server"/> (opened at the first check), fed the
    /// inputs it has not seen; null when the shadow cannot be used (the caller recomputes from scratch instead).
    /// </summary>
    static async Task<Tensor?> ShadowStepAsync(SwarmContext swarm, HopSession hop, ServerConnection server, Tensor input, long t,
        SessionOptions session, CancellationToken ct)
    {
        try
        {
            if (hop.Shadow is null)
            {
                var shadow = new HopSession(server, new ChainHop(server.Span, hop.Hop.Start, hop.Hop.End), session,
                    swarm.Options with { Compression = Compression.None });
                hop.SetShadow(shadow);
                await shadow.OpenAsync(ct).ConfigureAwait(false);
            }
            int synced = hop.ShadowSynced;
            long total = input.shape[1];
            using var fresh = input.narrow(1, synced, total - synced);                   // [B, S - synced, H]
            using var answer = await hop.Shadow!.StepAsync(fresh, synced, null, ct).ConfigureAwait(false);
            hop.ShadowSynced = (int)total;
            return answer.narrow(1, answer.shape[1] - t, t).clone();                    // [B, T, H]
        }
        catch (Exception e) when (!ct.IsCancellationRequested && e is not OutOfMemoryException)
        {
            swarm.Options.Logger.LogDebug("shadow session of {Hop} on {Server} failed, recomputing instead: {Message}", hop.Hop, server.Address, e.Message);
            hop.DropShadow();
            return null;
        }
        catch (Exception) when (ct.IsCancellationRequested)
        {
            hop.DropShadow();   // it may be mid-step: never reuse it
            throw;
        }
    }

    /// <summary>‖a − b‖ / ‖b‖; infinite when either holds NaN/Inf (a wrong answer, whoever gave it).</summary>
    public static double Difference(Tensor a, Tensor b)
    {
        using var scope = NewDisposeScope();
        var x = a.to(ScalarType.Float64);                                               // [B, T, H]
        var y = b.to(ScalarType.Float64);                                               // [B, T, H]
        if (!x.isfinite().all().item<bool>() || !y.isfinite().all().item<bool>()) return double.PositiveInfinity;
        double norm = y.norm().item<double>();
        return (x - y).norm().item<double>() / Math.Max(norm, 1e-12);
    }

    /// <summary>
    /// Checks <paramref name="output"/> ([B, T, H], the hop's answer to its last T inputs) against other servers.
    /// On <see cref="Verdict.HopLied"/> the hop's server is already distrusted in the pool.
    /// </summary>
    /// <remarks>
    /// Takes ownership of <paramref name="output"/>. A check that fails (a verifier went away) is only a check not
    /// made: it never fails the step.
    /// </remarks>
    public static async Task<Verdict> CheckAsync(SwarmContext swarm, HopSession hop, Tensor output, SessionOptions session,
        CancellationToken ct)
    {
        using (output)
        {
            // A verifier that stops answering must not hold the step for long: the step waits for its checks.
            using var bounded = CancellationTokenSource.CreateLinkedTokenSource(ct);
            bounded.CancelAfter(CheckTimeout(swarm.Options));
            var asking = new StrongBox<string?>();
            try { return await CheckCoreAsync(swarm, hop, output, session, asking, bounded.Token).ConfigureAwait(false); }
            catch (Exception e) when (!ct.IsCancellationRequested && e is not OutOfMemoryException)
            {
                // A verifier that ran out of time is not asked again for a while (a temporary ban, as for a failure).
                if (bounded.IsCancellationRequested && asking.Value is { } slow)
                    swarm.Pool.Ban(slow, new TimeoutException($"no answer to an activation check within {CheckTimeout(swarm.Options).TotalSeconds:F0} s"));
                swarm.Options.Logger.LogInformation("could not check {Hop}: {Message}", hop.Hop, e.Message);
                return Verdict.Inconclusive;
            }
        }
    }

    /// <summary>How long one hop's check may take: the request timeout, at most 30 s.</summary>
    public static TimeSpan CheckTimeout(RemoteOptions options) =>
        options.RequestTimeout < TimeSpan.FromSeconds(30) ? options.RequestTimeout : TimeSpan.FromSeconds(30);

    static async Task<Verdict> CheckCoreAsync(SwarmContext swarm, HopSession hop, Tensor output, SessionOptions session,
        StrongBox<string?> asking, CancellationToken ct)
    {
        var leftPadding = session.LeftPadding;
        var pool = swarm.Pool;
        var span = hop.Hop;
        var mine = swarm.Server(span);
        // The shadow's server first, while it is usable: its cache makes the check incremental.
        var others = pool.Servers
            .Where(s => s.Address != hop.Address && !pool.IsBanned(s.Address) && s.Info.StartBlock <= span.Start && span.End <= s.Info.EndBlock)
            .OrderBy(s => s.Address == hop.Shadow?.Address ? 0 : 1).ThenBy(_ => Random.Shared.Next()).ToList();
        if (hop.Shadow is not null && (others.Count == 0 || others[0].Address != hop.Shadow.Address)) hop.DropShadow();
        if (others.Count == 0)
        {
            pool.CountUnverifiable();
            return Verdict.Unverifiable;
        }
        pool.CountCheck();
        using var input = cat(hop.History.ToArray(), 1);                                // [B, S, H]: every input the hop has seen
        long t = output.shape[1];
        var options = swarm.Options with { Compression = Compression.None };
        async Task<Tensor> RecomputeAsync(ServerConnection server)
        {
            asking.Value = server.Address;
            var hopThere = new ChainHop(server.Span, span.Start, span.End);
            using var full = await RemoteCalls.ForwardAsync(server, hopThere, input, null, leftPadding, options, ct).ConfigureAwait(false);   // [B, S, H]
            return full.narrow(1, input.shape[1] - t, t).clone();                      // [B, T, H]: the step's rows
        }
        double Tolerance(ServerConnection a, ServerConnection b, bool aCompressed) =>
            Precision(a.Info) + Precision(b.Info) + (aCompressed ? Precision(swarm.Options.Compression) : 0);

        var second = others[0];
        asking.Value = second.Address;
        using var two = await ShadowStepAsync(swarm, hop, second, input, t, session, ct).ConfigureAwait(false)
                        ?? await RecomputeAsync(second).ConfigureAwait(false);
        double d12 = Difference(output, two), tol12 = Tolerance(mine, second, aCompressed: true);
        if (d12 <= tol12) return Verdict.Agreed;
        pool.CountMismatch();
        var log = swarm.Options.Logger;
        if (others.Count < 2)
        {
            log.LogWarning("{Hop} and {Other} disagree on blocks [{Start}, {End}) (relative difference {Diff:G3}, tolerance {Tol:G3}) " +
                "and no third server holds them: not deciding", span, second.Address, span.Start, span.End, d12, tol12);
            return Verdict.Inconclusive;
        }
        var third = others[1];
        using var three = await RecomputeAsync(third).ConfigureAwait(false);
        double d13 = Difference(output, three), tol13 = Tolerance(mine, third, aCompressed: true);
        double d23 = Difference(two, three), tol23 = Tolerance(second, third, aCompressed: false);
        string Evidence(string liar, double dLiar, double dHonest, string honest1, string honest2) =>
            $"blocks [{span.Start}, {span.End}), {input.shape[1]} positions: its output differs from {honest1}'s and {honest2}'s by " +
            $"{dLiar:G3} (relative L2), while they agree within {dHonest:G3} (tolerance {Math.Max(tol12, tol23):G3})";
        if (d23 <= tol23 && d13 > tol13)
        {
            pool.Distrust(hop.Address, Evidence(hop.Address, Math.Min(d12, d13), d23, second.Address, third.Address));
            return Verdict.HopLied;
        }
        if (d13 <= tol13 && d23 > tol23)
        {
            pool.Distrust(second.Address, Evidence(second.Address, Math.Min(d12, d23), d13, hop.Address, third.Address));
            return Verdict.OtherLied;
        }
        log.LogWarning("{Hop}, {Second} and {Third} disagree on blocks [{Start}, {End}) (relative differences {D12:G3}, {D13:G3}, {D23:G3}): " +
            "no majority, not deciding", span, second.Address, third.Address, span.Start, span.End, d12, d13, d23);
        return Verdict.Inconclusive;
    }
}
