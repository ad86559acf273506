using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Models.Kernels;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// As <see cref="FusedFixtureTests"/> for the dense families' HF fixtures (falcon-new, bloom): greedy decoding gives the
/// same tokens on the fused path and on the reference, every step's logits agree within 1e-4, and the fused path ran.
/// </summary>
public sealed class FusedDenseFixtureTests
{
    [Theory]
    [InlineData("falcon-new")]
    [InlineData("bloom")]
    public void Greedy_steps_have_the_same_logits_and_tokens(string name)
    {
        using var lm = CausalLM.Load(TestData.Path(name));
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var prompt = new long[] { 1, 5, 9, 14, 20, 27 };
        var fused = Greedy(lm, prompt, reference: false);
        List<(Tensor Logits, long Token)> reference;
        using (FusedDecode.Disable()) reference = Greedy(lm, prompt, reference: true);
        Assert.Equal(reference.Select(r => r.Token), fused.Select(f => f.Token));
        for (int i = 0; i < fused.Count; i++)
        {
            var diff = TensorAssert.MaxAbsDiff(reference[i].Logits, fused[i].Logits);
            Assert.True(diff <= 1e-4, $"{name} step {i}: logits differ by {diff}");
        }
    }

    [Theory]
    [InlineData("falcon-new")]
    [InlineData("bloom")]
    public async Task Generation_gives_the_same_tokens_on_both_paths(string name)
    {
        using var lm = CausalLM.Load(TestData.Path(name));
        var options = new GenerationOptions { MaxNewTokens = 32, IgnoreEos = true };
        var fused = await lm.GenerateAsync([[1, 2, 3, 4], [1, 7]], options);   // left-padded batch
        GenerationResult reference;
        using (FusedDecode.Disable()) reference = await lm.GenerateAsync([[1, 2, 3, 4], [1, 7]], options);
        Assert.Equal(reference.NewTokens, fused.NewTokens);
    }

    /// <summary>Prefill then 12 greedy steps in one session; each step's last logits and chosen token.</summary>
    static List<(Tensor Logits, long Token)> Greedy(CausalLM lm, long[] prompt, bool reference)
    {
        using var session = (LocalBlockSession)lm.Blocks.OpenSession(new SessionOptions(1, 32));
        var steps = new List<(Tensor, long)>();
        var ids = tensor(prompt, [1, prompt.Length]);                               // [1, T]
        for (int i = 0; i < 12; i++)
        {
            var h = session.Step(lm.Ends.Embed(ids));                                 // [1, T, H]
            var logits = lm.Ends.Logits(lm.Ends.FinalNorm(h.narrow(1, h.shape[1] - 1, 1))).reshape(-1);   // [V]
            long token = logits.argmax().item<long>();
            steps.Add((logits, token));
            ids = tensor(new[] { token }, [1, 1]);
        }
        Assert.Equal(reference ? 0 : 12, session.FusedSteps);
        return steps;
    }
}
