using PetalsSharp.Generation;
using PetalsSharp.Models;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Generation;

/// <summary>
/// Beam search on the llama-gqa fixture. There is no HF beam output in the fixtures, so the cached, reordering
/// implementation is checked against references computed here from full forwards: an exhaustive search over every
/// two-token continuation (320 beams cover all of them), and HF's algorithm restated without a cache, with an EOS id
/// chosen so that hypotheses finish early, for both early-stopping modes and two length penalties.
/// </summary>
public sealed class BeamSearchTests
{
    static readonly string Dir = TestData.Path("llama-gqa");

    static int[] Prompt()
    {
        using var r = Reference.Load("llama-gqa");
        return [.. r.IdRows("generation.prompt_ids")[0]];
    }

    [Fact]
    public async Task With_a_beam_per_token_two_steps_find_the_exhaustive_best_pair()
    {
        using var lm = CausalLM.Load(Dir);
        var prompt = Prompt();
        int vocab = lm.Config.VocabSize;
        (int, int) expected;
        using (var scope = NewDisposeScope())
        using (no_grad())
        {
            var ids = tensor(prompt.Select(i => (long)i).ToArray()).unsqueeze(0);                     // [1, T]
            var first = lm.Forward(ids)[0, -1].log_softmax(-1);                                      // [V]
            var pairs = cat([ids.expand(vocab, -1), arange(vocab).unsqueeze(1)], 1);                 // [V, T+1]
            var second = lm.Forward(pairs).select(1, -1).log_softmax(-1);                           // [V, V]
            var total = (first.unsqueeze(1) + second).reshape(-1);                                   // [V*V]
            long best = total.argmax().item<long>();
            expected = ((int)(best / vocab), (int)(best % vocab));
        }
        var result = await lm.GenerateAsync([prompt], new GenerationOptions { MaxNewTokens = 2, NumBeams = vocab, IgnoreEos = true });
        Assert.Equal(expected, (result.NewTokens[0][0], result.NewTokens[0][1]));
    }

    [Theory]
    [InlineData(4, 1.0, false)]
    [InlineData(4, 1.0, true)]
    [InlineData(3, 2.0, false)]
    [InlineData(5, -1.0, false)]
    public async Task The_top_beam_equals_HF_beam_search_restated_without_a_cache(int beams, double lengthPenalty, bool earlyStopping)
    {
        using var lm = CausalLM.Load(Dir);
        var prompt = Prompt();
        // An EOS id the model likes a few tokens in, so hypotheses finish before max_new_tokens.
        var greedy = await lm.GenerateAsync([prompt], new GenerationOptions { MaxNewTokens = 3, IgnoreEos = true });
        int eos = greedy.NewTokens[0][2];
        var options = new GenerationOptions
        {
            MaxNewTokens = 8, NumBeams = beams, LengthPenalty = lengthPenalty, EarlyStopping = earlyStopping, EosTokenIds = [eos],
        };
        var result = await lm.GenerateAsync([prompt], options);
        Assert.Equal(NaiveBeamSearch(lm, prompt, beams, 8, eos, lengthPenalty, earlyStopping), result.NewTokens[0]);
    }

    [Fact]
    public async Task Beam_search_refuses_what_it_does_not_combine_with()
    {
        using var lm = CausalLM.Load(Dir);
        await Assert.ThrowsAsync<NotSupportedException>(() => lm.GenerateAsync([[1, 2]], new GenerationOptions { NumBeams = 2, DoSample = true }));
        await Assert.ThrowsAsync<NotSupportedException>(() => lm.GenerateAsync([[1, 2], [3, 4]], new GenerationOptions { NumBeams = 2 }));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => lm.GenerateAsync([[1, 2]], new GenerationOptions { NumBeams = 0 }));
    }

    /// <summary>transformers 4.45's beam search for one prompt, every step a full forward over every beam.</summary>
    static List<int> NaiveBeamSearch(CausalLM lm, int[] prompt, int nb, int maxNew, int eos, double lp, bool early)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var beams = Enumerable.Range(0, nb).Select(_ => prompt.ToList()).ToList();
        var scores = Enumerable.Range(0, nb).Select(i => i == 0 ? 0.0 : -1e9).ToArray();
        var hyps = new List<(double Score, List<int> Tokens, bool Eos)>();
        double worst = 1e9;
        void Add(List<int> tokens, double sum, int len, bool isEos)
        {
            double score = sum / Math.Pow(len, lp);
            if (hyps.Count < nb || score > worst)
            {
                hyps.Add((score, tokens, isEos));
                if (hyps.Count > nb)
                {
                    var sorted = hyps.Select((h, i) => (h.Score, i)).OrderBy(x => x.Score).ThenBy(x => x.i).ToList();
                    hyps.RemoveAt(sorted[0].i);
                    worst = sorted[1].Score;
                }
                else worst = Math.Min(score, worst);
            }
        }
        bool done = false;
        for (int step = 0; step < maxNew && !done; step++)
        {
            var ids = tensor(beams.SelectMany(b => b.Select(t => (long)t)).ToArray(), [nb, beams[0].Count]);   // [nb, T]
            var logp = lm.Forward(ids).select(1, -1).log_softmax(-1);                                           // [nb, V]
            long vocab = logp.shape[1];
            var total = logp + tensor(scores.Select(s => (float)s).ToArray()).unsqueeze(1);
            var (top, index) = total.reshape(-1).topk(2 * nb);
            var values = top.data<float>().ToArray();
            var flat = index.data<long>().ToArray();
            var next = new List<List<int>>();
            var nextScores = new List<double>();
            for (int rank = 0; rank < values.Length && next.Count < nb; rank++)
            {
                int beam = (int)(flat[rank] / vocab), token = (int)(flat[rank] % vocab);
                if (token == eos)
                {
                    if (rank < nb) Add([.. beams[beam]], values[rank], step, true);
                    continue;
                }
                next.Add([.. beams[beam], token]);
                nextScores.Add(values[rank]);
            }
            done = hyps.Count >= nb && (early || worst >= values.Max() / Math.Pow(step, lp));
            beams = next;
            scores = [.. nextScores];
        }
        if (!done)
            for (int j = 0; j < nb; j++) Add(beams[j], scores[j], beams[j].Count - prompt.Length, false);
        var best = hyps[0];
        foreach (var h in hyps) if (h.Score >= best.Score) best = h;
        var produced = best.Tokens.Skip(prompt.Length).ToList();
        if (best.Eos) produced.Add(eos);
        return produced;
    }
}
