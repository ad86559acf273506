using System.Runtime.CompilerServices;
using PetalsSharp.Models;
using static TorchSharp.torch;

namespace PetalsSharp.Generation;

// The speculative loop: a prefill step picks the first token as usual; then each step sends the last token (not yet in
// the cache) and the draft's proposals, reads k + 1 next-token distributions from one pass, keeps the accepted prefix
// and one token of the model's own, and the next step rolls the cache back over what was rejected.
internal sealed partial class GenerationRun
{
    SpeculationStats? _speculation;
    Random? _rng;

    async IAsyncEnumerable<GenerationStep> RunSpeculativeAsync(SpeculativeOptions spec, [EnumeratorCancellation] CancellationToken ct)
    {
        if (Batch != 1) throw new NotSupportedException($"speculative decoding takes one prompt at a time (got {Batch})");
        if (_o.Sampler is not null) throw new NotSupportedException("speculative decoding needs the built-in greedy or multinomial choice, not a custom sampler");
        if (_hidden.Count > 0) throw new NotSupportedException("speculative decoding does not capture hidden states; generate without it");
        if (_o.MaxNewTokens == 0) yield break;
        _rng = _o.Seed is { } seed ? new Random(seed) : new Random();
        var tuning = _o.Tuning;
        int prefix = tuning?.PrefixLength ?? 0;
        int maxLength = prefix + _promptLength + _o.MaxNewTokens + spec.MaxDraftTokens + 1;
        var (session, start) = OpenOrReuse(maxLength);
        await using var _ = _o.Reuse is null ? session : null;
        int steps = 0, proposed = 0, accepted = 0, produced = 0, k = spec.DraftTokens;

        // Prefill: the prompt (with any virtual tokens), then the first token as plain decoding picks it.
        int first;
        using (var scores = await ScoresAsync(session, _seqs[0].Skip(start).ToArray(), prefill: true, start, ct))   // [1, V]
            first = ChooseFrom(_seqs[0], scores.narrow(0, 0, 1)).Token;
        steps++;
        int cached = prefix + _promptLength;   // positions the cache holds that the generation keeps
        _o.Reuse?.Holds(_seqs[0].Take(cached));
        Accept(0, first, produced, out var delta);
        yield return new GenerationStep(produced++, [first], [delta]);

        while (_finished[0] is null)
        {
            ct.ThrowIfCancellationRequested();
            var context = _seqs[0];
            int room = _o.MaxNewTokens - produced - 1;                    // drafts past the last token would be wasted
            var proposal = room <= 0 ? DraftProposal.None : await spec.Draft.ProposeAsync(
                new DraftRequest(context.ToArray(), Math.Min(k, room), context.Count + room + 1, (seq, s) => ChooseFrom(seq, s)), ct);
            var drafts = proposal.Tokens.Take(Math.Max(0, room)).ToArray();
            if (drafts.Any(t => t < 0 || t >= _model.Config.VocabSize))
                throw new InvalidOperationException($"the draft proposed a token outside the model's vocabulary ({_model.Config.VocabSize})");

            int[] input = [context[^1], .. drafts];
            int keep, next;
            using (var scores = await ScoresAsync(session, input, prefill: false, start: cached, ct))          // [1 + n, V]
                (keep, next) = Verify(context, drafts, proposal.Probabilities, scores);
            steps++;
            proposed += drafts.Length;
            accepted += keep;
            cached += 1 + keep;
            _o.Reuse?.Holds(context.Concat(drafts.Take(keep)));

            foreach (var token in drafts.Take(keep).Append(next))
            {
                Accept(0, token, produced, out delta);
                yield return new GenerationStep(produced++, [token], [delta]);
                if (_finished[0] is not null) break;
            }
            if (spec.Adaptive && drafts.Length > 0)
                k = keep == drafts.Length ? Math.Min(spec.MaxDraftTokens, k + 1) : keep * 2 < drafts.Length ? Math.Max(1, k - 1) : k;
            _speculation = new SpeculationStats(steps, proposed, accepted);
        }
        _speculation = new SpeculationStats(steps, proposed, accepted);
    }

    /// <summary>
    /// Runs <paramref name="ids"/> from cache position <paramref name="start"/> (rolling back what lies past it) and returns
    /// the raw next-token scores after each of them, <c>[T, V]</c> float32 (after the last one only for the prefill).
    /// </summary>
    async Task<Tensor> ScoresAsync(IBlockSession session, int[] ids, bool prefill, int start, CancellationToken ct)
    {
        var tuning = _o.Tuning;
        Tensor embedded;
        using (var scope = NewDisposeScope())
        {
            var t = tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Length], device: _model.Ends.EmbeddingWeight.device);  // [1, T]
            embedded = (prefill && tuning?.Prefix is not null
                ? _model.Ends.AfterEmbedding(WithPrefix(_model.Ends.EmbedTokens(t), tuning.Prefix))                        // [1, P+T, H]
                : _model.Ends.Embed(t)).DetachFromDisposeScope();                                                          // [1, T, H]
        }
        var options = new StepOptions(StartFromPosition: session.Position == start ? null : start,
            Prompts: prefill ? tuning?.DeepPrompts : null);
        Tensor output;
        using (embedded) output = await StepReusedAsync(session, embedded, options, ct);                                 // [1, T, H]
        using (output)
        using (var scope = NewDisposeScope())
        {
            var rows = prefill ? output.narrow(1, output.shape[1] - 1, 1) : output;                                       // [1, T', H]
            var head = tuning?.Logits ?? _model.Ends.Logits;
            return head(_model.Ends.FinalNorm(rows)).squeeze(0).to(ScalarType.Float32).DetachFromDisposeScope();          // [T', V]
        }
    }

    /// <summary>How many drafts the model keeps and the token it adds, from its scores after each draft prefix <c>[1 + n, V]</c>.</summary>
    (int Keep, int Next) Verify(List<int> context, int[] drafts, IReadOnlyList<double[]>? q, Tensor scores)
    {
        using var scope = NewDisposeScope();
        var seqs = Enumerable.Range(0, drafts.Length + 1)
            .Select(i => (IReadOnlyList<int>)context.Concat(drafts.Take(i)).ToArray()).ToList();
        var processed = Process(scores, seqs);                                                    // [1 + n, V]
        if (!_o.DoSample) return SpeculativeAcceptance.Greedy(Sampling.Greedy(processed), drafts);
        var p = Probabilities(processed);
        return SpeculativeAcceptance.Sample(p, drafts, q, _rng!);
    }

    /// <summary>The generation's choice after <paramref name="seq"/> from raw scores <c>[1, V]</c>, with the distribution when sampling.</summary>
    (int Token, double[]? Probabilities) ChooseFrom(IReadOnlyList<int> seq, Tensor scores)
    {
        using var scope = NewDisposeScope();
        var processed = Process(scores, [seq]);                                                   // [1, V]
        if (!_o.DoSample) return (Sampling.Greedy(processed)[0], null);
        var p = Probabilities(processed)[0];
        return (SpeculativeAcceptance.Draw(p, p.Sum(), _rng!), p);
    }

    static double[][] Probabilities(Tensor processed)
    {
        var probs = processed.to(ScalarType.Float64).softmax(-1).cpu();                           // [R, V]
        long rows = probs.shape[0], vocab = probs.shape[1];
        var data = probs.data<double>().ToArray();
        return Enumerable.Range(0, (int)rows).Select(r => data.AsSpan((int)(r * vocab), (int)vocab).ToArray()).ToArray();
    }
}
