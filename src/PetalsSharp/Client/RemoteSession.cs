using Microsoft.Extensions.Logging;
using PetalsSharp.Models;
using PetalsSharp.Swarm;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace PetalsSharp.Client;

/// <summary>
/// An inference session across a chain of servers: one Inference stream per hop, opened at the first step.
/// Each hop remembers every input it was sent, so that a replacement server could rebuild its cache.
/// </summary>
internal sealed class RemoteSession : IBlockSession
{
    readonly SwarmContext _swarm;
    readonly List<HopSession> _hops;
    readonly CancellationTokenSource _cts = new();
    int _disposed;
    readonly int _start;
    bool _opened;
    bool _pushRefused;   // a server declined to push on once: later steps are driven hop by hop

    public RemoteSession(SwarmContext swarm, IReadOnlyList<ChainHop> chain, SessionOptions options)
    {
        StepChecks.Session(options);
        _swarm = swarm;
        Options = options;
        _hops = chain.Select(h => new HopSession(swarm.Server(h), h, options, swarm.Options)).ToList();
        _start = chain.Count > 0 ? chain[0].Start : 0;
    }

    /// <summary>Deep prompts of <paramref name="hop"/>'s blocks out of the stack's (null stays null).</summary>
    Tensor? HopPrompts(Tensor? prompts, ChainHop hop) => prompts?.narrow(0, hop.Start - _start, hop.End - hop.Start);

    public int Position { get; private set; }
    public SessionOptions Options { get; }

    /// <summary>The chain this session runs through.</summary>
    public IReadOnlyList<ChainHop> Chain => _hops.Select(h => h.Hop).ToList();

    public async ValueTask<Tensor> StepAsync(Tensor hidden, StepOptions? options = null, CancellationToken cancellationToken = default)
    {
        var start = StepChecks.Step(hidden, options, Options, Position, _swarm.Config);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(_cts.Token, cancellationToken);
        var ct = linked.Token;
        if (!_opened)
        {
            await Task.WhenAll(_hops.Select(OpenHopAsync)).ConfigureAwait(false);
            _opened = true;
        }
        var h = hidden;                                                                 // [B, T, H]
        var hypoIds = options?.HypoIds;                                                 // [B] int64, or null
        var prompts = options?.Prompts?.detach();                                       // [blocks, B or 1, P, H]
        if (prompts is not null) BlockPrompts.Check(prompts, _hops[^1].Hop.End - _start, hidden);
        // Every hop gets its own step id up front, so a step that was pushed and is later resent is deduplicated.
        var ids = _hops.ToDictionary(hop => hop, _ => HopSession.NewStepId());
        // In a sampled step every hop's reply is checked on another server (StepVerifier) while the chain goes on;
        // the step's output is returned only once the checks agree. Steps of deep-prompt sessions are not sampled: a
        // recompute would need the prompts of every position.
        bool verify = prompts is null && _hops[0].PrefillPrompts is null && _swarm.Pool.DrawVerification();
        foreach (var hop in _hops) hop.BeforeStep(start, reorders: hypoIds is not null);
        var checks = new List<(HopSession Hop, Task<StepVerifier.Verdict> Verdict)>();
        // Deep prompts differ per server, so a step carrying them is driven hop by hop.
        bool pushed = _swarm.Options.UseServerToServer && !_pushRefused && _hops.Count > 1 && prompts is null && _hops[0].FitsOneMessage(hidden)
                      && await TrySendWithPushAsync(hidden, start, hypoIds, ids, ct).ConfigureAwait(false);
        for (int i = 0; i < _hops.Count; i++)
        {
            var hop = _hops[i];
            int end = hop.Hop.End;
            var input = h;                                                              // [B, T, H]
            Tensor output;                                                              // [B, T, H]
            // A pushed hop's input is the previous hop's reply, ours alone: its history keeps it rather than a copy.
            bool adopt = pushed && !ReferenceEquals(input, hidden), adopted = false;
            try
            {
                output = await Retries.Attempt(_swarm, hop.Hop, () => pushed
                    ? hop.ReceiveAsync(ids[hop], input, start, hypoIds, ct, adopt)
                    : hop.StepAsync(input, start, hypoIds, ct, ids.GetValueOrDefault(hop), HopPrompts(prompts, hop.Hop)), ct).ConfigureAwait(false);
                adopted = adopt;
                if (verify) checks.Add((hop, StepVerifier.CheckAsync(_swarm, hop, output.detach().clone(), Options, ct)));
            }
            catch (HopFailure failure)
            {
                int replacements;
                (output, replacements) = await FailoverAsync(i, h, start, hypoIds, HopPrompts(prompts, _hops[i].Hop), failure, ct).ConfigureAwait(false);
                i += replacements - 1;   // the replacement hops already ran this step
                pushed = false;          // later hops may have missed the push: drive them from here (same step ids)
            }
            if (pushed && hop.PushRefused is { } why && i < _hops.Count - 1)
            {
                // The next server never got this step: send it ourselves (same step ids), and for the rest of the session.
                _swarm.Options.Logger.LogInformation("{Hop} does not push on ({Why}); the client drives the next hops itself", hop.Hop, why);
                pushed = false;
                _pushRefused = true;
            }
            if (!ReferenceEquals(h, hidden) && !adopted) h.Dispose();
            h = output;
            options?.OnBlockOutput?.Invoke(end - 1, h.detach().clone().DetachFromDisposeScope());
        }
        if (pushed) _swarm.Pool.CountPushedStep();
        if (checks.Count > 0) h = await AfterChecksAsync(checks, h, hidden, start, options, ct).ConfigureAwait(false);
        Position = start + (int)hidden.shape[1];
        return h;
    }

    /// <summary>
    /// Waits for a sampled step's checks. A hop proven to lie fed every later hop, this step and before: it and every
    /// hop after it are replaced by a failover that replays its inputs, and the replacement's output is the step's.
    /// </summary>
    async Task<Tensor> AfterChecksAsync(List<(HopSession Hop, Task<StepVerifier.Verdict> Verdict)> checks, Tensor output, Tensor hidden,
        int start, StepOptions? options, CancellationToken ct)
    {
        var verdicts = await Task.WhenAll(checks.Select(c => c.Verdict)).ConfigureAwait(false);
        var liars = checks.Zip(verdicts).Where(x => x.Second == StepVerifier.Verdict.HopLied).Select(x => _hops.IndexOf(x.First.Hop)).Where(i => i >= 0).ToList();
        if (liars.Count == 0) return output;
        int first = liars.Min();
        var liar = _hops[first];
        using var inputs = cat(liar.History.ToArray(), 1);                              // [B, start+T, H]: every input it saw
        var lie = new HopFailure(liar.Hop, new SwarmException($"{liar.Address} returned wrong activations"));
        var (replaced, _) = await FailoverAsync(first, hidden, start, null, null, lie, ct, _hops.Count - first, inputs).ConfigureAwait(false);
        output.Dispose();
        options?.OnBlockOutput?.Invoke(_hops[^1].Hop.End - 1, replaced.detach().clone().DetachFromDisposeScope());
        return replaced;                                                                // [B, T, H]
    }

    /// <summary>
    /// Sends the step to the first server with the rest of the chain: each server pushes its output to the next,
    /// so a step costs about the sum of one-way hops instead of a round trip per server. The client still reads
    /// every hop's reply, which is what it would replay to a replacement.
    /// </summary>
    async Task<bool> TrySendWithPushAsync(Tensor hidden, int start, Tensor? hypoIds, Dictionary<HopSession, string> ids, CancellationToken ct)
    {
        var first = _hops[0];
        var next = _hops.Skip(1).Select(h => new NextServer
        {
            Address = h.Address, PeerId = h.PeerId ?? "", SessionId = h.SessionId, StepId = ids[h], PushToken = h.PushToken,
        });
        try
        {
            await Retries.Attempt(_swarm, first.Hop, async () =>
            {
                await first.SendAsync(hidden, start, hypoIds, ids[first], next, ct).ConfigureAwait(false);
                return 0;
            }, ct).ConfigureAwait(false);
            return true;
        }
        catch (HopFailure)
        {
            return false;   // the first hop is down: the step loop fails it over and drives the chain itself
        }
    }

    async Task OpenHopAsync(HopSession hop)
    {
        try { await Retries.Attempt(_swarm, hop.Hop, async () => { await hop.OpenAsync(_cts.Token).ConfigureAwait(false); return 0; }).ConfigureAwait(false); }
        catch (HopFailure) when (_swarm.Options.MaxRetries > 0)
        {
            // Opening is replayable like any step: the first step will fail over this hop (its history is empty).
            hop.MarkBroken();
        }
    }

    /// <summary>
    /// Replaces hop <paramref name="index"/> after it failed: bans its server (already done by Attempt), plans a
    /// chain for exactly its blocks (possibly several servers), replays the inputs it had seen plus this step's
    /// from position 0 so the new servers rebuild their caches, and returns this step's outputs. Retries with
    /// growing backoff; after MaxRetries the session fails with the last cause.
    /// </summary>
    /// <remarks>
    /// With <paramref name="count"/> &gt; 1 the hops from <paramref name="index"/> on are replaced together, from
    /// <paramref name="replayed"/> (the first one's whole input, this step's included) when given.
    /// </remarks>
    async Task<(Tensor Output, int Hops)> FailoverAsync(int index, Tensor hidden, int start, Tensor? hypoIds, Tensor? prompts,
        HopFailure first, CancellationToken ct, int count = 1, Tensor? replayed = null)
    {
        var failed = _hops[index];
        int spanEnd = _hops[index + count - 1].Hop.End;
        // The replay starts at position 0, so it carries the prompts of the prefill (or of this step, if it is one).
        var replayPrompts = start == 0 ? prompts : failed.PrefillPrompts;
        using var replay = replayed?.alias() ?? failed.ReplayInput(start, hypoIds, hidden);   // [B, start+T, H]
        Exception last = first;
        var options = _swarm.Options;
        options.Logger.LogInformation("replacing {Hop} in an inference session at position {Start}", failed.Hop, start);
        var busy = new BusyClock();   // a busy first failure is already routed around (RemotePool.MarkBusy): replan at once
        for (int retry = 1; retry <= options.MaxRetries; retry++)
        {
            await Task.Delay(Retries.Backoff(options, retry), ct).ConfigureAwait(false);
            var fresh = new List<HopSession>();
            try
            {
                IReadOnlyList<ChainHop> chain;
                (chain, retry) = await _swarm.ReplanAsync(failed.Hop.Start, spanEnd, retry, ct, (long)Options.Batch * Options.MaxLength).ConfigureAwait(false);
                var x = replay;                                                         // [B, start+T, H]
                foreach (var hop in chain)
                {
                    var session = new HopSession(_swarm.Server(hop), hop, Options, options);
                    fresh.Add(session);
                    var input = x;
                    x = await Retries.Attempt(_swarm, hop, async () =>
                    {
                        await session.OpenAsync(ct).ConfigureAwait(false);
                        return await session.StepAsync(input, 0, null, ct, null,
                            replayPrompts?.narrow(0, hop.Start - failed.Hop.Start, hop.End - hop.Start)).ConfigureAwait(false);
                    }, ct).ConfigureAwait(false);
                    if (!ReferenceEquals(input, replay)) input.Dispose();
                }
                foreach (var old in _hops.Skip(index).Take(count)) await old.DisposeAsync().ConfigureAwait(false);
                _hops.RemoveRange(index, count);
                _hops.InsertRange(index, fresh);
                _swarm.ReportRoute(_hops.Select(h => h.Hop));
                using (x) return (x.narrow(1, start, hidden.shape[1]).clone(), fresh.Count);   // [B, T, H]: this step's positions
            }
            catch (Exception e) when (e is HopFailure or SwarmException)
            {
                // SwarmException: the blocks stayed uncovered until the last retry.
                foreach (var s in fresh) await s.DisposeAsync().ConfigureAwait(false);
                last = e;
                if (e is HopFailure f && busy.Wait(f, options) is { } wait)
                {
                    retry--;   // no room anywhere just now: load, not a failure, so it does not use up a retry
                    await Task.Delay(wait, ct).ConfigureAwait(false);
                }
            }
        }
        throw new SwarmException($"blocks [{failed.Hop.Start}, {spanEnd}) could not be served after {options.MaxRetries} retries; last failure: {last.Message}",
            last is HopFailure ? last.InnerException : last);
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _cts.Cancel();
        foreach (var hop in _hops) hop.Dispose();
        _cts.Dispose();
    }

    /// <summary>Closes every hop's stream concurrently, so a long chain does not wait 1 s per silent server.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _cts.Cancel();
        await Task.WhenAll(_hops.Select(h => h.DisposeAsync().AsTask())).ConfigureAwait(false);
        _cts.Dispose();
    }
}
