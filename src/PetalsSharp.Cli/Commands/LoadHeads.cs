using PetalsSharp.Models;
using static TorchSharp.torch;

namespace PetalsSharp.Cli.Commands;

/// <summary>
/// The client ends of <c>petals load</c>, shared by all its sessions: each session hands in its last hidden state and
/// gets its greedy next token, and the final norm and LM head run once for every session waiting, as one batched
/// product. A head reads as many bytes as a third of a 100M model's blocks, so eight sessions each running their own
/// would make the load generator, not the server, the bottleneck.
/// <para>
/// A batch goes as soon as every decoding session has handed in its row, or <see cref="Window"/> after the first row
/// arrived. Waiting for all of them is what keeps them in one phase: a session whose row came late would otherwise get
/// its token in a batch of its own, step a pass behind the others, and split every server pass in two for good. A
/// session counts from its first row (one still waiting for cache room holds up nobody) until it leaves; the window
/// only bounds what a failover mid-generation costs the others.
/// </para>
/// </summary>
public sealed class LoadHeads(ModelEnds ends)
{
    /// <summary>Longest wait for the other sessions' rows once one has arrived.</summary>
    public static TimeSpan Window { get; set; } = TimeSpan.FromMilliseconds(250);

    readonly object _lock = new();
    readonly List<(Tensor Row, TaskCompletionSource<int> Token)> _pending = [];
    int _running;
    long _generation;

    /// <summary>Batches run so far and the rows they carried.</summary>
    public (long Batches, long Rows) Batched { get; private set; }

    /// <summary>A session starts handing in rows: call before its first <see cref="NextAsync"/>.</summary>
    public void Enter()
    {
        lock (_lock) _running++;
    }

    /// <summary>A session is done (finished or failed): batches stop waiting for it.</summary>
    public void Leave()
    {
        List<(Tensor, TaskCompletionSource<int>)>? batch = null;
        lock (_lock)
        {
            _running--;
            if (_pending.Count > 0 && _pending.Count >= _running) batch = TakeLocked();
        }
        if (batch is not null) Run(batch);
    }

    /// <summary>The greedy next token after <paramref name="last"/> <c>[1, H]</c> (the last block's output at the last position).</summary>
    public Task<int> NextAsync(Tensor last)
    {
        var tcs = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        List<(Tensor, TaskCompletionSource<int>)>? batch = null;
        long generation;
        bool first;
        lock (_lock)
        {
            _pending.Add((last.detach().clone().DetachFromDisposeScope(), tcs));   // [1, H], owned until the batch runs
            (generation, first) = (_generation, _pending.Count == 1);
            if (_pending.Count >= _running) batch = TakeLocked();
        }
        if (batch is not null) Run(batch);
        else if (first) _ = FlushLaterAsync(generation);
        return tcs.Task;
    }

    async Task FlushLaterAsync(long generation)
    {
        await Task.Delay(Window).ConfigureAwait(false);
        List<(Tensor, TaskCompletionSource<int>)>? batch = null;
        lock (_lock)
            if (_generation == generation && _pending.Count > 0) batch = TakeLocked();
        if (batch is not null) Run(batch);
    }

    List<(Tensor, TaskCompletionSource<int>)> TakeLocked()
    {
        var batch = _pending.ToList();
        _pending.Clear();
        _generation++;
        return batch;
    }

    void Run(List<(Tensor Row, TaskCompletionSource<int> Token)> batch)
    {
        try
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            var rows = cat(batch.Select(b => b.Row).ToArray(), 0).unsqueeze(1);     // [N, 1, H]
            var logits = ends.DecodeLogits(ends.FinalNorm(rows)).squeeze(1);       // [N, V]
            var tokens = logits.argmax(-1).data<long>().ToArray();                  // [N]
            lock (_lock) Batched = (Batched.Batches + 1, Batched.Rows + batch.Count);
            for (int i = 0; i < batch.Count; i++) batch[i].Token.TrySetResult((int)tokens[i]);
        }
        catch (Exception e)
        {
            foreach (var b in batch) b.Token.TrySetException(e);
        }
        finally
        {
            foreach (var b in batch) b.Row.Dispose();
        }
    }
}
