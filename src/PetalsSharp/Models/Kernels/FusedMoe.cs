using System.Numerics.Tensors;

namespace PetalsSharp.Models.Kernels;

/// <summary>
/// Mixtral's sparse mixture of SwiGLU experts on the fused path, from normed rows to the residual, as
/// <see cref="SparseMoe.Forward"/> computes it: router logits, softmax over all experts, top-k renormalised to sum to
/// 1, each chosen expert run once on the rows routed to it, the weighted sum added to <see cref="FusedStep.Hidden"/>.
/// Four phases, three barriers, however many experts are chosen.
/// </summary>
/// <remarks>
/// Routing is a few dozen floats, so every worker computes it into its own table rather than waiting on one worker.
/// The chosen (row, expert) pairs are packed expert by expert, and each expert's rows gathered into one contiguous
/// block, so an expert is a <see cref="FusedSwiGlu"/> over its own 1 to 16 rows and a decode step reads only the k
/// chosen experts' weights. All experts' up halves share one phase and all down halves the next: each worker owns the
/// same output columns of every expert, so it sums the weighted outputs of its slice without another barrier.
/// </remarks>
public sealed unsafe class FusedMoe : IFusedMlp
{
    // Slots past the shared ones: router logits, per-worker routing tables, gathered rows, packed expert outputs.
    const int LogitsSlot = Slot.FirstFree, TableSlot = Slot.FirstFree + 1, GatheredSlot = Slot.FirstFree + 2, ExpertOutSlot = Slot.FirstFree + 3;

    readonly FusedLinear _router;
    readonly FusedSwiGlu[] _experts;
    readonly int _topK, _hidden, _width, _tableStride;

    FusedMoe(FusedLinear router, FusedSwiGlu[] experts, int topK)
    {
        (_router, _experts, _topK) = (router, experts, topK);
        (_hidden, _width) = (experts[0].OutWidth, experts[0].Width);
        // counts, offsets (E + 1), cursors, then per pair: packed row, packed weight, chosen expert, chosen weight;
        // then the probabilities. Rounded to a cache line so workers' tables never share one.
        int e = experts.Length, pairs = MaxPairs;
        _tableStride = (3 * e + 1 + 4 * pairs + e + 15) & ~15;
    }

    int MaxPairs => MatRows.MaxRows * _topK;

    /// <summary>
    /// The fused form of a router <c>[E, H]</c> and its experts' (gate, up, down) linears, appended to
    /// <paramref name="modules"/> in that order (their adapter slots); null when a weight cannot be read in place.
    /// </summary>
    public static FusedMoe? From(BlockLinear router, IReadOnlyList<(BlockLinear Gate, BlockLinear Up, BlockLinear Down)> experts,
        int topK, List<string> modules)
    {
        if (experts.Count == 0 || topK < 1 || topK > experts.Count) return null;
        modules.Add(router.Module);
        var fusedRouter = FusedLinear.From(router, modules.Count - 1);
        var fused = new FusedSwiGlu[experts.Count];
        for (int e = 0; e < fused.Length; e++)
        {
            var expert = FusedSwiGlu.From(experts[e].Gate, experts[e].Up, experts[e].Down, modules);
            if (expert is null) return null;
            fused[e] = expert;
        }
        return fusedRouter is null ? null : new FusedMoe(fusedRouter, fused, topK);
    }

    public void Prepare(FusedStep step)
    {
        long rows = MatRows.MaxRows, pairs = MaxPairs;
        step.Ensure(LogitsSlot, rows * _experts.Length);
        step.Ensure(TableSlot, (long)step.Team.Size * _tableStride);
        step.Ensure(GatheredSlot, pairs * _hidden);
        step.Ensure(Slot.Gate, pairs * _width);
        step.Ensure(Slot.Up, pairs * _width);
        step.Ensure(ExpertOutSlot, pairs * _hidden);
        step.Ensure(Slot.Out, rows * _hidden);
    }

    /// <summary><c>Hidden += moe(normed)</c>; <paramref name="normed"/> is <c>[R, H]</c>.</summary>
    public void Execute(FusedStep step, float* normed, int worker, int workers)
    {
        int rows = step.Rows, h = _hidden, width = _width;
        float* logits = step.Buffer(LogitsSlot);                                       // [R, E]
        float* gathered = step.Buffer(GatheredSlot), expertOut = step.Buffer(ExpertOutSlot);   // [P, H] [P, H]
        float* gate = step.Buffer(Slot.Gate), up = step.Buffer(Slot.Up);               // [P, I] [P, I]
        float* output = step.Buffer(Slot.Out);                                         // [R, H]
        _router.Phase(step, normed, logits, worker);
        step.Team.Barrier();

        var table = new Table(step.Buffer(TableSlot) + (long)worker * _tableStride, _experts.Length, MaxPairs);
        Route(logits, rows, table);
        var (p0, p1) = MatRows.Slice(rows * _topK, worker, workers, align: 1);
        for (int p = p0; p < p1; p++)
            new ReadOnlySpan<float>(normed + (long)table.Row[p] * h, h).CopyTo(new Span<float>(gathered + (long)p * h, h));
        step.Team.Barrier();

        for (int e = 0; e < _experts.Length; e++)
        {
            int n = table.Count[e], at = table.Offset[e];
            if (n > 0) _experts[e].UpRows(step, gathered + (long)at * h, n, gate + (long)at * width, up + (long)at * width, worker, workers);
        }
        step.Team.Barrier();

        var (o0, o1) = MatRows.Slice(h, worker, workers);
        if (o1 <= o0) return;
        for (int r = 0; r < rows; r++) new Span<float>(output + (long)r * h + o0, o1 - o0).Clear();
        // Expert by expert, in order, as the reference's index_add accumulates.
        for (int e = 0; e < _experts.Length; e++)
        {
            int n = table.Count[e], at = table.Offset[e];
            if (n == 0) continue;
            _experts[e].DownRows(step, gate + (long)at * width, n, expertOut + (long)at * h, worker, workers);
            for (int p = at; p < at + n; p++)
            {
                var sum = new Span<float>(output + (long)table.Row[p] * h + o0, o1 - o0);
                TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(expertOut + (long)p * h + o0, o1 - o0), table.Weight[p], sum, sum);
            }
        }
        Residual.Add(step.Hidden, output, rows, h, o0, o1);
    }

    /// <summary>
    /// Fills <paramref name="t"/> from <c>logits [R, E]</c>: softmax in f32, the top k (ties to the lower expert)
    /// renormalised to sum to 1, then the (row, weight) pairs packed by expert with rows ascending.
    /// </summary>
    void Route(float* logits, int rows, in Table t)
    {
        int experts = _experts.Length, k = _topK;
        for (int e = 0; e < experts; e++) t.Count[e] = 0;
        for (int r = 0; r < rows; r++)
        {
            float* l = logits + (long)r * experts;
            float max = float.NegativeInfinity, sum = 0;
            for (int e = 0; e < experts; e++) max = MathF.Max(max, l[e]);
            for (int e = 0; e < experts; e++) sum += t.Probs[e] = MathF.Exp(l[e] - max);
            for (int e = 0; e < experts; e++) t.Probs[e] /= sum;
            float top = 0;
            for (int j = 0; j < k; j++)
            {
                int best = -1;
                for (int e = 0; e < experts; e++)
                    if (!float.IsNegativeInfinity(t.Probs[e]) && (best < 0 || t.Probs[e] > t.Probs[best])) best = e;
                t.Chosen[r * k + j] = best;
                top += t.ChosenWeight[r * k + j] = t.Probs[best];
                t.Probs[best] = float.NegativeInfinity;   // taken (a probability is never -inf, even a NaN one)
                t.Count[best]++;
            }
            for (int j = 0; j < k; j++) t.ChosenWeight[r * k + j] /= top;
        }
        t.Offset[0] = 0;
        for (int e = 0; e < experts; e++)
        {
            t.Cursor[e] = t.Offset[e];
            t.Offset[e + 1] = t.Offset[e] + t.Count[e];
        }
        for (int i = 0; i < rows * k; i++)
        {
            int p = t.Cursor[t.Chosen[i]]++;
            t.Row[p] = i / k;
            t.Weight[p] = t.ChosenWeight[i];
        }
    }

    /// <summary>One worker's routing table, laid out in its slice of a float scratch buffer (ints share the floats' width).</summary>
    readonly struct Table
    {
        public readonly int* Count, Offset, Cursor, Row, Chosen;
        public readonly float* Weight, ChosenWeight, Probs;

        public Table(float* at, int experts, int pairs)
        {
            Count = (int*)at;
            Offset = Count + experts;
            Cursor = Offset + experts + 1;
            Row = Cursor + experts;
            Weight = (float*)(Row + pairs);
            Chosen = (int*)(Weight + pairs);
            ChosenWeight = (float*)(Chosen + pairs);
            Probs = ChosenWeight + pairs;
        }
    }
}
