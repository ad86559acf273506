using PetalsSharp.Models.Kernels;
using static TorchSharp.torch;

namespace PetalsSharp.Models;

/// <summary>
/// Continuous batching over local sessions: cached steps of different sessions over the same blocks, each at its own
/// position with its own caches, run as one fused pass, so the weights are read once for all of them. Decode is bound
/// by reading the weights, so a pass of eight one-token steps costs little more than one.
/// </summary>
public static class JointSteps
{
    /// <summary>
    /// What lets two steps share a pass: the same blocks and new-token count; the same adapter only for blocks whose
    /// experts see gathered rows (elsewhere each session's rows get its own adapter in the shared pass).
    /// </summary>
    sealed record Key(DecoderBlock First, int Blocks, int Tokens, Lora.LoraAdapter? Adapter);

    /// <summary>
    /// The key steps must share to run in one pass, or null when this step runs alone (the reference path, deep prompts,
    /// per-block outputs, more rows than the kernels take, a cache or adapter the kernels do not read).
    /// </summary>
    public static object? KeyOf(LocalBlockSession session, Tensor hidden, StepOptions? options)
    {
        if (options?.OnBlockOutput is not null || hidden.dim() != 3) return null;
        var adapter = session.Options.Adapter;
        if (!FusedDecode.Applies(hidden, hidden.shape[0] * hidden.shape[1], adapter, session.Caches, options?.Prompts is not null)) return null;
        if (session.Plans() is not { } plans) return null;
        var blocks = session.Stack.Blocks;
        bool gathers = plans.Any(p => p.GathersRows);
        return new Key(blocks[0], blocks.Count, (int)hidden.shape[1], gathers ? adapter as Lora.LoraAdapter : null);
    }

    /// <summary>Rows a step adds to a pass (at most <see cref="MatRows.MaxRows"/> per pass).</summary>
    public static int Rows(Tensor hidden) => (int)(hidden.shape[0] * hidden.shape[1]);

    /// <summary>The adapter all steps of <paramref name="key"/> share (null: each brings its own, or none): a joint <see cref="FusedStep"/> is made for it.</summary>
    public static Lora.LoraAdapter? AdapterOf(object key) => ((Key)key).Adapter;

    /// <summary>
    /// Runs steps that share a <see cref="KeyOf"/> key as one pass on <paramref name="joint"/> (made for their adapter).
    /// Each step is checked first; one that fails gets its exception and the others still run. Returns each step's
    /// output <c>[B, T, H]</c> or its error, in order.
    /// </summary>
    public static unsafe (Tensor? Output, Exception? Error)[] Run(
        IReadOnlyList<(LocalBlockSession Session, Tensor Hidden, StepOptions? Options)> steps, FusedStep joint)
    {
        var outcomes = new (Tensor?, Exception?)[steps.Count];
        var admitted = new List<(int Index, int Start)>(steps.Count);
        for (int i = 0; i < steps.Count; i++)
        {
            try { admitted.Add((i, steps[i].Session.Admit(steps[i].Hidden, steps[i].Options))); }
            catch (Exception e) { outcomes[i] = (null, e); }
        }
        if (admitted.Count == 0) return outcomes;
        int tokens = (int)steps[admitted[0].Index].Hidden.shape[1];
        var segments = new FusedStep.Segment[admitted.Count];
        var rows = new Tensor[admitted.Count];
        for (int j = 0; j < admitted.Count; j++)
        {
            var (session, hidden, _) = steps[admitted[j].Index];
            segments[j] = new FusedStep.Segment(session.Options.Batch, admitted[j].Start, session.Options.LeftPadding?.ToArray(), session.Caches,
                session.Options.Adapter as Lora.LoraAdapter);
            rows[j] = hidden;                                                      // [B_j, T, H]
        }
        var first = steps[admitted[0].Index].Session;
        var plans = first.Plans()!;
        // [ΣB, T, H], a fresh contiguous copy the blocks update in place (cat of one tensor may return that tensor).
        using var h = rows.Length == 1 ? rows[0].contiguous().clone() : cat(rows, 0);
        joint.BeginJoint(segments, tokens, Weights.NativeMemory.Pointer<float>(h));
        joint.RunBlocks(plans, first.Stack.Blocks, caches: null);
        long offset = 0;
        for (int j = 0; j < admitted.Count; j++)
        {
            var (index, start) = admitted[j];
            var session = steps[index].Session;
            int batch = session.Options.Batch;
            outcomes[index] = (h.narrow(0, offset, batch), null);                   // [B_j, T, H] view of the pass's rows
            offset += batch;
            session.Advanced(start, tokens);
        }
        return outcomes;
    }
}
