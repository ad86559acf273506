using System.Runtime.CompilerServices;
using PetalsSharp.Models;
using static TorchSharp.torch;

namespace PetalsSharp.Generation;

// Beam search as transformers 4.45's _beam_search and BeamSearchScorer run it for one prompt: log-softmax scores plus
// each beam's running sum, the top 2·B candidates over all beams, finished (EOS) candidates scored by length penalty
// into a set of B hypotheses, early stopping as HF's True/False, and the best hypothesis at the end. The cache follows
// the beams with the session's reorder (HypoIds), so each step sends one token per beam.
internal sealed partial class GenerationRun
{
    /// <summary>HF's BeamHypotheses: the best <c>capacity</c> finished sequences by length-penalised score.</summary>
    sealed class Hypotheses(int capacity, double lengthPenalty, bool earlyStopping)
    {
        public readonly List<(double Score, List<int> Tokens, bool Eos)> Beams = [];
        double _worst = 1e9;

        public void Add(List<int> tokens, double sumLogprobs, int generatedLength, bool eos)
        {
            double score = sumLogprobs / Math.Pow(generatedLength, lengthPenalty);
            if (Beams.Count < capacity || score > _worst)
            {
                Beams.Add((score, tokens, eos));
                if (Beams.Count > capacity)
                {
                    var sorted = Beams.Select((b, i) => (b.Score, i)).OrderBy(x => x.Score).ThenBy(x => x.i).ToList();
                    Beams.RemoveAt(sorted[0].i);
                    _worst = sorted[1].Score;
                }
                else _worst = Math.Min(score, _worst);
            }
        }

        public bool IsDone(double bestSumLogprobs, int generatedLength)
        {
            if (Beams.Count < capacity) return false;
            if (earlyStopping) return true;
            return _worst >= bestSumLogprobs / Math.Pow(generatedLength, lengthPenalty);
        }

        /// <summary>The highest score; among equal ones the last added, as Python's stable sort then pop() gives.</summary>
        public (double Score, List<int> Tokens, bool Eos) Best()
        {
            var best = Beams[0];
            foreach (var b in Beams) if (b.Score >= best.Score) best = b;
            return best;
        }
    }

    async IAsyncEnumerable<GenerationStep> RunBeamAsync([EnumeratorCancellation] CancellationToken ct)
    {
        if (Batch != 1) throw new NotSupportedException($"beam search takes one prompt at a time (got {Batch})");
        if (_o.Tuning is not null || _hidden.Count > 0 || _o.Reuse is not null)
            throw new NotSupportedException("beam search runs without tuning, hidden states or a reused session");
        if (_o.MaxNewTokens == 0) yield break;
        int nb = _o.NumBeams, promptLength = _seqs[0].Count;
        var session = _model.Blocks.OpenSession(new SessionOptions(nb, promptLength + _o.MaxNewTokens) { Routing = _o.Routing });
        await using var _ = session;
        var beams = Enumerable.Range(0, nb).Select(_ => _seqs[0].ToList()).ToList();
        var beamScores = Enumerable.Range(0, nb).Select(i => i == 0 ? 0.0 : -1e9).ToArray();   // only beam 0 expands at first
        var hyps = new Hypotheses(nb, _o.LengthPenalty, _o.EarlyStopping);
        long[] input = [.. beams.SelectMany(b => b.Select(t => (long)t))];
        int width = promptLength;
        long[]? order = null;
        bool done = false;
        for (int step = 0; step < _o.MaxNewTokens && !done; step++)
        {
            ct.ThrowIfCancellationRequested();
            Tensor embedded;
            using (var scope = NewDisposeScope())
            {
                var ids = tensor(input, [nb, width], device: _model.Ends.EmbeddingWeight.device);               // [nb, T]
                embedded = _model.Ends.Embed(ids).DetachFromDisposeScope();                                     // [nb, T, H]
            }
            Tensor output;
            var options = new StepOptions(HypoIds: order is null ? null : tensor(order));
            using (embedded) output = await session.StepAsync(embedded, options, ct);                          // [nb, T, H]
            List<(double Score, int Beam, int Token)> candidates;
            using (output)
            using (var scope = NewDisposeScope())
            {
                var last = _model.Ends.FinalNorm(output.narrow(1, output.shape[1] - 1, 1));                     // [nb, 1, H]
                var logp = _model.Ends.Logits(last).squeeze(1).to(ScalarType.Float32).log_softmax(-1);         // [nb, V]
                var scores = Process(logp, beams) + tensor(beamScores.Select(s => (float)s).ToArray()).unsqueeze(1);   // [nb, V]
                long vocab = scores.shape[1];
                var (top, index) = scores.reshape(-1).topk(2 * nb);                                            // [2nb]
                var values = top.data<float>().ToArray();
                var flat = index.data<long>().ToArray();
                candidates = [.. values.Select((v, i) => ((double)v, (int)(flat[i] / vocab), (int)(flat[i] % vocab)))];
            }
            var nextBeams = new List<List<int>>(nb);
            var nextScores = new double[nb];
            order = new long[nb];
            int kept = 0;
            for (int rank = 0; rank < candidates.Count && kept < nb; rank++)
            {
                var (score, beam, token) = candidates[rank];
                if (_eos.Contains(token))
                {
                    if (rank >= nb) continue;
                    hyps.Add([.. beams[beam]], score, step, eos: true);
                    continue;
                }
                nextBeams.Add([.. beams[beam], token]);
                nextScores[kept] = score;
                order[kept++] = beam;
            }
            done = hyps.IsDone(candidates.Max(c => c.Score), step);
            beams = nextBeams;
            beamScores = nextScores;
            input = [.. beams.Select(b => (long)b[^1])];
            width = 1;
        }
        if (!done)
            for (int j = 0; j < nb; j++) hyps.Add(beams[j], beamScores[j], beams[j].Count - promptLength, eos: false);

        var best = hyps.Best();
        IEnumerable<int> produced = best.Tokens.Skip(promptLength);
        // HF writes the first EOS id after a hypothesis that ended on one.
        if (best.Eos) produced = produced.Append((_o.EosTokenIds ?? _model.Config.EosTokenIds)[0]);
        int n = 0;
        foreach (var token in produced.ToList())
        {
            if (_finished[0] is not null) break;
            Accept(0, token, n, out var delta);
            yield return new GenerationStep(n++, [token], [delta]);
        }
    }
}
