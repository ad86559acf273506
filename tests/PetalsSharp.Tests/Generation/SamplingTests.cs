using PetalsSharp.Generation;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Generation;

/// <summary>The built-in processors against HF's definitions on hand-made scores.</summary>
public sealed class SamplingTests
{
    [Fact]
    public void Repetition_penalty_divides_positive_and_multiplies_negative_seen_scores()
    {
        var scores = tensor(new float[] { 2f, -2f, 1f, 4f }, [1, 4]);
        var result = Sampling.RepetitionPenalty([[0, 1, 1]], scores, 2.0).data<float>().ToArray();
        Assert.Equal(new float[] { 1f, -4f, 1f, 4f }, result);
    }

    [Fact]
    public void Top_k_keeps_the_k_largest()
    {
        var scores = tensor(new float[] { 1f, 5f, 3f, 4f }, [1, 4]);
        var result = Sampling.TopK(scores, 2).data<float>().ToArray();
        Assert.Equal(new[] { float.NegativeInfinity, 5f, float.NegativeInfinity, 4f }, result);
    }

    [Fact]
    public void Top_p_keeps_the_smallest_head_reaching_p()
    {
        // probabilities 0.5, 0.3, 0.15, 0.05: p = 0.75 keeps the first two, p = 0.85 the first three
        var probs = new[] { 0.5, 0.3, 0.15, 0.05 };
        var scores = tensor(probs.Select(p => (float)Math.Log(p)).ToArray(), [1, 4]);
        var kept = Sampling.TopP(scores, 0.75).data<float>().ToArray().Select(float.IsFinite).ToArray();
        Assert.Equal(new[] { true, true, false, false }, kept);
        kept = Sampling.TopP(scores, 0.85).data<float>().ToArray().Select(float.IsFinite).ToArray();
        Assert.Equal(new[] { true, true, true, false }, kept);
    }

    [Fact]
    public void Multinomial_sampler_follows_the_distribution_and_the_seed()
    {
        var scores = tensor(new float[] { 0f, (float)Math.Log(3), float.NegativeInfinity }, [1, 3]);
        var sampler = new MultinomialSampler(1);
        var counts = new int[3];
        for (int i = 0; i < 4000; i++) counts[sampler.Sample(scores)[0]]++;
        Assert.Equal(0, counts[2]);
        Assert.InRange(counts[1] / 4000.0, 0.70, 0.80);
        var a = new MultinomialSampler(5);
        var b = new MultinomialSampler(5);
        for (int i = 0; i < 20; i++) Assert.Equal(a.Sample(scores), b.Sample(scores));
    }
}
