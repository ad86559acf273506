using static TorchSharp.torch;

namespace PetalsSharp.Generation;

/// <summary>The built-in processors, with HF's semantics, and the greedy and multinomial samplers.</summary>
public static class Sampling
{
    /// <summary>HF <c>RepetitionPenaltyLogitsProcessor</c>: seen tokens' positive scores ÷ p, negative × p.</summary>
    public static Tensor RepetitionPenalty(IReadOnlyList<IReadOnlyList<int>> sequences, Tensor scores, double penalty)
    {
        var rows = new Tensor[sequences.Count];
        for (int b = 0; b < rows.Length; b++)
        {
            var row = scores[b];                                                           // [V]
            if (sequences[b].Count == 0) { rows[b] = row; continue; }
            var idx = tensor(sequences[b].Distinct().Select(i => (long)i).ToArray(), device: scores.device);
            var seen = row.index_select(0, idx);
            var penalised = where(seen.lt(0), seen * penalty, seen / penalty);
            rows[b] = row.clone().index_copy_(0, idx, penalised);
        }
        return stack(rows);                                                                // [B, V]
    }

    /// <summary>HF <c>TopKLogitsWarper</c>: scores below the k-th largest become -inf.</summary>
    public static Tensor TopK(Tensor scores, int k)
    {
        if (k <= 0 || k >= scores.shape[^1]) return scores;
        var kth = scores.topk(k, dim: -1).values.narrow(-1, k - 1, 1);                   // [B, 1]
        return scores.masked_fill(scores.lt(kth), float.NegativeInfinity);
    }

    /// <summary>HF <c>TopPLogitsWarper</c>: drop the low tail whose cumulative probability is at most 1 - p.</summary>
    public static Tensor TopP(Tensor scores, double p)
    {
        if (p >= 1) return scores;
        var (sorted, order) = scores.sort(dim: -1, descending: false);                    // [B, V]
        var cumulative = sorted.softmax(-1).cumsum(-1);                                   // [B, V]
        var remove = cumulative.le(1 - p);
        remove[TensorIndex.Ellipsis, -1] = tensor(false);                                 // keep at least one token
        var removeInOriginalOrder = remove.scatter(-1, order, remove);
        return scores.masked_fill(removeInOriginalOrder, float.NegativeInfinity);
    }

    /// <summary>Argmax per row; ties go to the lowest id, as torch.argmax does.</summary>
    public static int[] Greedy(Tensor scores)
    {
        var ids = scores.argmax(-1).to(ScalarType.Int64).data<long>().ToArray();
        return ids.Select(i => (int)i).ToArray();
    }
}

/// <summary>Draws from softmax(scores) with a seeded RNG on the host, so a seed reproduces on any device.</summary>
public sealed class MultinomialSampler(int? seed) : ITokenSampler
{
    readonly Random _rng = seed is { } s ? new Random(s) : new Random();

    public int[] Sample(Tensor scores)
    {
        using var scope = NewDisposeScope();
        var probs = scores.to(ScalarType.Float64).softmax(-1).cpu();                       // [B, V]
        long rows = probs.shape[0], vocab = probs.shape[1];
        var data = probs.data<double>().ToArray();
        var result = new int[rows];
        for (long b = 0; b < rows; b++)
        {
            double u = _rng.NextDouble(), acc = 0;
            int chosen = -1;
            for (long v = 0; v < vocab; v++)
            {
                var pv = data[b * vocab + v];
                if (pv <= 0) continue;
                chosen = (int)v;
                acc += pv;
                if (u < acc) break;
            }
            result[b] = chosen < 0 ? 0 : chosen;
        }
        return result;
    }
}

/// <summary>Argmax sampler.</summary>
public sealed class GreedySampler : ITokenSampler
{
    public int[] Sample(Tensor scores) => Sampling.Greedy(scores);
}
