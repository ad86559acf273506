using static TorchSharp.torch;

namespace PetalsSharp.Generation;

/// <summary>
/// Speculative decoding: a draft proposes up to <see cref="DraftTokens"/> tokens, and one multi-token step through the
/// model checks them all. Greedy output is the same as plain greedy decoding; sampled output has the same distribution
/// (the acceptance rule of Leviathan et al. and Chen et al., 2023). Each step yields the accepted drafts plus one token
/// of the model's own, so a swarm pays its hop latencies once for several tokens.
/// </summary>
/// <param name="Draft">Where proposals come from: <see cref="PromptLookupDraft"/> or a <see cref="DraftModel"/>.</param>
/// <param name="DraftTokens">Tokens proposed per step at first (k).</param>
/// <param name="MaxDraftTokens">Upper bound of k when it adapts: a verification step is k + 1 rows.</param>
/// <param name="Adaptive">Grow k after a step that accepted every draft, shrink it after one that accepted under half.</param>
public sealed record SpeculativeOptions(IDraftSource Draft, int DraftTokens = 4, int MaxDraftTokens = 8, bool Adaptive = true)
{
    public void Validate()
    {
        if (DraftTokens < 1 || DraftTokens > MaxDraftTokens)
            throw new ArgumentOutOfRangeException(nameof(DraftTokens), $"draft tokens must be in [1, {MaxDraftTokens}] (got {DraftTokens})");
        if (MaxDraftTokens > 15)
            throw new ArgumentOutOfRangeException(nameof(MaxDraftTokens), $"at most 15 draft tokens per step (got {MaxDraftTokens})");
    }
}

/// <summary>What a draft is asked for: up to <see cref="Count"/> tokens after <see cref="Context"/>.</summary>
/// <param name="Context">Every token so far (prompt and generated), no padding.</param>
/// <param name="Count">How many tokens to propose at most.</param>
/// <param name="MaxLength">The longest the generation's context can grow (a draft model sizes its session by it).</param>
/// <param name="Choose">
/// The generation's own choice over a draft model's raw next-token scores <c>[1, V]</c> for a context: the token and, when
/// sampling, the distribution it was drawn from (<c>V</c> probabilities), so the acceptance rule can correct for it.
/// </param>
public sealed record DraftRequest(IReadOnlyList<int> Context, int Count, int MaxLength,
    Func<IReadOnlyList<int>, Tensor, (int Token, double[]? Probabilities)> Choose);

/// <summary>Proposed tokens and, per token, the distribution it was drawn from (null: chosen deterministically).</summary>
public sealed record DraftProposal(IReadOnlyList<int> Tokens, IReadOnlyList<double[]>? Probabilities = null)
{
    public static readonly DraftProposal None = new([]);
}

/// <summary>A source of draft tokens for <see cref="SpeculativeOptions"/>.</summary>
public interface IDraftSource : IAsyncDisposable
{
    ValueTask<DraftProposal> ProposeAsync(DraftRequest request, CancellationToken cancellationToken = default);
}

/// <summary>
/// Prompt lookup (as in transformers' <c>prompt_lookup_num_tokens</c>): find the most recent earlier occurrence of the
/// context's last n-gram (n from <paramref name="maxNgram"/> down to 1) and propose what followed it. Free, and it wins
/// where the output repeats its input: summaries, code edits, repetitive text.
/// </summary>
public sealed class PromptLookupDraft(int maxNgram = 3) : IDraftSource
{
    public ValueTask<DraftProposal> ProposeAsync(DraftRequest request, CancellationToken cancellationToken = default) =>
        ValueTask.FromResult(new DraftProposal(Lookup(request.Context, request.Count, maxNgram)));

    /// <summary>Up to <paramref name="count"/> tokens that followed the latest earlier match of the last n-gram.</summary>
    public static IReadOnlyList<int> Lookup(IReadOnlyList<int> context, int count, int maxNgram = 3)
    {
        int len = context.Count;
        for (int n = Math.Min(maxNgram, len - 1); n >= 1; n--)
            for (int start = len - n - 1; start >= 0; start--)
            {
                int i = 0;
                while (i < n && context[start + i] == context[len - n + i]) i++;
                if (i < n) continue;
                int from = start + n, take = Math.Min(count, len - from);
                if (take <= 0) continue;
                return Enumerable.Range(from, take).Select(j => context[j]).ToArray();
            }
        return [];
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}

/// <summary>How a speculative generation went.</summary>
/// <param name="Steps">Steps through the model, the prefill included.</param>
/// <param name="Proposed">Draft tokens sent for verification.</param>
/// <param name="Accepted">Draft tokens the model kept.</param>
public sealed record SpeculationStats(int Steps, int Proposed, int Accepted)
{
    public double AcceptanceRate => Proposed == 0 ? 0 : (double)Accepted / Proposed;
}

/// <summary>
/// The acceptance rule. Row i of the model's distributions is for the token after the context and drafts 0..i-1; row n
/// (after every draft) gives the bonus token when all are accepted.
/// </summary>
public static class SpeculativeAcceptance
{
    /// <summary>Greedy: drafts are kept while they equal the model's argmax; the first argmax that differs ends the step.</summary>
    public static (int Accepted, int Next) Greedy(IReadOnlyList<int> argmax, IReadOnlyList<int> drafts)
    {
        if (argmax.Count != drafts.Count + 1) throw new ArgumentException($"{drafts.Count} drafts need {drafts.Count + 1} rows (got {argmax.Count})");
        int a = 0;
        while (a < drafts.Count && argmax[a] == drafts[a]) a++;
        return (a, argmax[a]);
    }

    /// <summary>
    /// Sampling: draft i is kept with probability min(1, p_i(d)/q_i(d)); the first rejected one is replaced by a draw
    /// from norm(max(0, p_i − q_i)), and if all are kept a bonus token is drawn from p_n. The emitted tokens are then
    /// distributed as draws from p. <paramref name="q"/> null means the drafts were chosen deterministically (q = 1 on d).
    /// </summary>
    public static (int Accepted, int Next) Sample(IReadOnlyList<double[]> p, IReadOnlyList<int> drafts, IReadOnlyList<double[]>? q, Random rng)
    {
        if (p.Count != drafts.Count + 1) throw new ArgumentException($"{drafts.Count} drafts need {drafts.Count + 1} rows (got {p.Count})");
        for (int i = 0; i < drafts.Count; i++)
        {
            int d = drafts[i];
            double qd = q is null ? 1.0 : q[i][d], pd = p[i][d];
            if (qd > 0 && rng.NextDouble() < Math.Min(1.0, pd / qd)) continue;
            var residual = new double[p[i].Length];
            double total = 0;
            for (int v = 0; v < residual.Length; v++)
            {
                double r = p[i][v] - (q is null ? (v == d ? 1.0 : 0.0) : q[i][v]);
                residual[v] = r > 0 ? r : 0;
                total += residual[v];
            }
            // A zero residual means p ≤ q everywhere, i.e. p = q: the draft could not have been rejected but for rounding.
            return (i, total > 0 ? Draw(residual, total, rng) : Draw(p[i], p[i].Sum(), rng));
        }
        return (drafts.Count, Draw(p[drafts.Count], p[drafts.Count].Sum(), rng));
    }

    /// <summary>A draw from unnormalised weights summing to <paramref name="total"/>.</summary>
    public static int Draw(double[] weights, double total, Random rng)
    {
        double u = rng.NextDouble() * total, acc = 0;
        int last = 0;
        for (int v = 0; v < weights.Length; v++)
        {
            if (weights[v] <= 0) continue;
            last = v;
            acc += weights[v];
            if (u < acc) return v;
        }
        return last;
    }
}
