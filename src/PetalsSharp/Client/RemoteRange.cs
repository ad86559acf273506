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
    public static Task<Tensor> ForwardAsync(SwarmContext swarm, int start, int end, Tensor input, Tensor? prompts,
        IReadOnlyList<int>? leftPadding, CancellationToken ct) =>
        Retries.RunAsync(swarm, start, end, ct, async chain =>
        {
            var h = input;                                                             // [B, T, H]
            foreach (var hop in chain)
            {
                var p = Slice(prompts, start, hop);                                    // [hop blocks, B or 1, P, H]
                var next = await Retries.Attempt(swarm, hop, () =>
                    RemoteCalls.ForwardAsync(swarm.Server(hop), hop, h, p, leftPadding, swarm.Options, ct), ct);   // [B, T, H]
                if (!ReferenceEquals(h, input)) h.Dispose();
                h = next;
            }
            return h;
        });

    /// <summary>Gradients of the range's input and (when given) of its deep prompts <c>[end-start, B or 1, P, H]</c>.</summary>
    public static Task<(Tensor GradInput, Tensor? GradPrompts)> BackwardAsync(SwarmContext swarm, int start, int end, Tensor input,
        Tensor? prompts, Tensor gradOutput, IReadOnlyList<int>? leftPadding, CancellationToken ct) =>
        Retries.RunAsync(swarm, start, end, ct, async chain =>
        {
            // Several servers for one range: recompute their inputs first, then go back through them in reverse.
            var inputs = new List<Tensor> { input };                                   // each [B, T, H]
            for (int i = 0; i + 1 < chain.Count; i++)
            {
                var p = Slice(prompts, start, chain[i]);
                inputs.Add(await Retries.Attempt(swarm, chain[i], () =>
                    RemoteCalls.ForwardAsync(swarm.Server(chain[i]), chain[i], inputs[i], p, leftPadding, swarm.Options, ct), ct));
            }
            var grad = gradOutput;                                                     // [B, T, H]
            var promptGrads = new Tensor?[chain.Count];                                // each [hop blocks, B or 1, P, H]
            for (int i = chain.Count - 1; i >= 0; i--)
            {
                var hop = chain[i];
                var p = Slice(prompts, start, hop);
                (grad, promptGrads[i]) = await Retries.Attempt(swarm, hop, () =>
                    RemoteCalls.BackwardAsync(swarm.Server(hop), hop, inputs[i], p, grad, leftPadding, swarm.Options, ct), ct);
            }
            return (grad, prompts is null ? null : promptGrads.Length == 1 ? promptGrads[0] : cat(promptGrads.Select(g => g!).ToList(), 0));
        });

    /// <summary>The hop's blocks out of a range's prompts (null stays null).</summary>
    static Tensor? Slice(Tensor? prompts, int start, ChainHop hop) =>
        prompts?.narrow(0, hop.Start - start, hop.End - hop.Start);
}
