using PetalsSharp.Models;
using PetalsSharp.Models.Kernels;
using PetalsSharp.Wire;

using static TorchSharp.torch;
using WireTensor = PetalsSharp.Wire.V1.Tensor;

namespace PetalsSharp.Server;

/// <summary>
/// Continuous batching of inference steps: a step that the fused kernels take joins every step of other sessions over
/// the same blocks that is queued when it reaches the front of the <see cref="ComputeScheduler"/>, and they run as one
/// pass over the weights (<see cref="JointSteps"/>). Sessions join and leave between passes; a step that cannot join
/// (prompts, a long prefill, the reference path) runs alone as before.
/// </summary>
/// <param name="scheduler">The compute thread.</param>
/// <param name="prefillChunkRows">Rows per compute task of a long step (<see cref="ServerOptions.PrefillChunkRows"/>).</param>
internal sealed class StepBatcher(ComputeScheduler scheduler, int prefillChunkRows = 128) : IDisposable
{
    /// <summary>Joint steps by adapter (scratch and the adapter's factors), used on the compute thread only.</summary>
    readonly Dictionary<object, FusedStep> _joints = new();
    static readonly object NoAdapter = new();

    /// <summary>Adapters whose joint steps are kept; past this, all are dropped and made again on demand.</summary>
    const int MaxJoints = 16;

    sealed record Input(object Key, LocalBlockSession Session, Tensor Hidden, StepOptions Options, PetalsSharp.Wire.V1.Compression Compression);

    /// <summary>Runs one step of <paramref name="session"/> and encodes its output <c>[B, T, H]</c>.</summary>
    public Task<WireTensor> RunAsync(LocalBlockSession session, Tensor hidden, StepOptions options, PetalsSharp.Wire.V1.Compression compression,
        CancellationToken ct)
    {
        int batch = (int)hidden.shape[0], tokens = (int)hidden.shape[1], chunk = Math.Max(1, prefillChunkRows / Math.Max(1, batch));
        if (tokens > chunk && options is { Prompts: null, OnBlockOutput: null })
            return RunChunkedAsync(session, hidden, options, compression, chunk, ct);
        if (FusedChunk(session, hidden, tokens, options) is (int fused, { } chunkKey))
            return RunChunkedAsync(session, hidden, options, compression, fused, ct, chunkKey);
        if (JointSteps.KeyOf(session, hidden, options) is not { } key)
            return scheduler.RunAsync(ComputeScheduler.InferencePriority, () =>
            {
                using var scope = NewDisposeScope();
                using var noGrad = no_grad();
                return TensorCodec.Encode(session.Step(hidden, options), compression);   // [B, T, H]
            }, ct);
        return scheduler.RunJoinableAsync<Input, WireTensor>(ComputeScheduler.InferencePriority, key, JointSteps.Rows(hidden),
            MatRows.MaxRows, new Input(key, session, hidden, options, compression), RunGroup, member: session, ct);
    }

    /// <summary>
    /// A long step as consecutive steps of <paramref name="chunk"/> tokens, one compute task each, so steps queued
    /// meanwhile (other sessions decoding) run between them. Causal attention over the cache makes the chunks' outputs
    /// the whole step's; the beam reorder and rollback belong to the first chunk. With a <paramref name="fusedKey"/>
    /// the chunks run on the shared joint step of that key rather than the session's own: a session's own fused step
    /// keeps scratch for 16 rows (3.3 MB on an 8B-shaped span) as long as the session lives, and a session that
    /// decodes in joint passes would hold it only for its prompt.
    /// </summary>
    async Task<WireTensor> RunChunkedAsync(LocalBlockSession session, Tensor hidden, StepOptions options,
        PetalsSharp.Wire.V1.Compression compression, int chunk, CancellationToken ct, object? fusedKey = null)
    {
        int tokens = (int)hidden.shape[1];
        using var whole = empty_like(hidden);                                           // [B, T, H]
        WireTensor? encoded = null;
        for (int start = 0; start < tokens; start += chunk)
        {
            int n = Math.Min(chunk, tokens - start), at = start;
            bool first = start == 0, last = start + n == tokens;
            encoded = await scheduler.RunAsync(ComputeScheduler.InferencePriority, () =>
            {
                using var scope = NewDisposeScope();
                using var noGrad = no_grad();
                var part = hidden.narrow(1, at, n);                                     // [B, n, H]
                var partOptions = first ? options : new StepOptions();
                var output = fusedKey is null
                    ? StepWhole(session, part, partOptions)                             // [B, n, H]
                    : Single(JointSteps.Run([(session, part, partOptions)], JointFor(JointSteps.AdapterOf(fusedKey)))[0]);
                whole.narrow(1, at, n).copy_(output);
                return last ? TensorCodec.Encode(whole, compression) : null;            // [B, T, H]
            }, ct);
        }
        return encoded!;
    }

    /// <summary>
    /// Tokens per chunk when a short prompt (more rows than one fused step takes, at most
    /// <see cref="LocalBlockSession.ShortPromptRows"/>) runs as consecutive fused steps, each its own compute task; null
    /// when it should not. Eight sessions' prompts queued one after another were a third of a short benchmark run.
    /// </summary>
    static (int Chunk, object Key)? FusedChunk(LocalBlockSession session, Tensor hidden, int tokens, StepOptions options)
    {
        if (session.ShortPromptChunk(hidden, tokens, options) is not { } chunk) return null;
        using var first = hidden.narrow(1, 0, chunk);                                   // [B, chunk, H]
        return JointSteps.KeyOf(session, first, options) is { } key ? (chunk, key) : null;
    }

    /// <summary>
    /// A long prompt's chunk as one step. Its last chunk may be a short prompt's size: that one stays on the reference
    /// too, where the session would otherwise run it as fused steps with scratch of its own that it keeps.
    /// </summary>
    static Tensor StepWhole(LocalBlockSession session, Tensor part, StepOptions options)
    {
        if (JointSteps.Rows(part) <= MatRows.MaxRows) return session.Step(part, options);
        using var reference = FusedDecode.Disable();
        return session.Step(part, options);
    }

    static Tensor Single((Tensor? Output, Exception? Error) outcome)
    {
        if (outcome.Error is { } error) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(error);
        return outcome.Output!;
    }

    (WireTensor? Value, Exception? Error)[] RunGroup(IReadOnlyList<Input> inputs)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var joint = JointFor(JointSteps.AdapterOf(inputs[0].Key));
        var outcomes = JointSteps.Run(inputs.Select(i => (i.Session, i.Hidden, (StepOptions?)i.Options)).ToArray(), joint);
        var encoded = new (WireTensor?, Exception?)[inputs.Count];
        for (int i = 0; i < inputs.Count; i++)
        {
            if (outcomes[i].Error is { } error) encoded[i] = (null, error);
            else
                try { encoded[i] = (TensorCodec.Encode(outcomes[i].Output!, inputs[i].Compression), null); }   // [B, T, H]
                catch (Exception e) { encoded[i] = (null, e); }
        }
        return encoded;
    }

    FusedStep JointFor(Models.Lora.LoraAdapter? adapter)
    {
        object key = adapter ?? NoAdapter;
        if (_joints.TryGetValue(key, out var joint)) return joint;
        if (_joints.Count >= MaxJoints) Clear();
        return _joints[key] = new FusedStep(WorkerTeam.Shared, adapter);
    }

    void Clear()
    {
        foreach (var j in _joints.Values) j.Dispose();
        _joints.Clear();
    }

    /// <summary>Call after the scheduler has stopped: the joint steps belong to its thread.</summary>
    public void Dispose() => Clear();
}
