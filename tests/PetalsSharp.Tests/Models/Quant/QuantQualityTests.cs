using System.Text.Json;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Models.Quant;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models.Quant;

/// <summary>
/// Issue 17, acceptance 1: stories260K (a trained model) teacher-forced on its three reference sequences; the
/// next-token distributions of the 40 generated positions of each (120 in all) are compared with f32's.
/// </summary>
public class QuantQualityTests(ITestOutputHelper output)
{
    static readonly Lazy<List<int[]>> Sequences = new(() =>
    {
        using var reference = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(Fixtures.Stories260KDir!, "reference.json")));
        return reference.RootElement.GetProperty("continuations").EnumerateArray()
            .Select(c => (c.GetProperty("sequence_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray(),
                          c.GetProperty("prompt_ids").GetArrayLength()))
            .Select(p => p.Item1.Select((id, i) => i < p.Item2 - 1 ? -1 - id : id).ToArray())   // prompt ids marked negative but the last
            .ToList();
    });

    /// <summary>Log-probabilities <c>[40, V]</c> at the positions that predict a generated token, per sequence.</summary>
    static List<Tensor> LogProbs(CausalLM lm)
    {
        var result = new List<Tensor>();
        using var noGrad = no_grad();
        foreach (var marked in Sequences.Value)
        {
            var ids = marked.Select(m => (long)(m < 0 ? -1 - m : m)).ToArray();
            int first = Array.FindIndex(marked, m => m >= 0);                       // the last prompt position
            using var scope = NewDisposeScope();
            var logits = lm.Forward(tensor(ids, [1, ids.Length]));                // [1, T, V]
            var picked = logits[0].narrow(0, first, ids.Length - 1 - first);      // [40, V]
            result.Add(picked.log_softmax(-1).MoveToOuterDisposeScope());
        }
        return result;
    }

    /// <summary>
    /// The same log-probabilities through cached single-token steps after a prefill of the prompt: the path a
    /// decode takes (one-row products on the packed bytes; for nf4, x rounded to int8 per block).
    /// </summary>
    static List<Tensor> StepLogProbs(CausalLM lm)
    {
        var result = new List<Tensor>();
        using var noGrad = no_grad();
        foreach (var marked in Sequences.Value)
        {
            var ids = marked.Select(m => (long)(m < 0 ? -1 - m : m)).ToArray();
            int first = Array.FindIndex(marked, m => m >= 0);
            using var scope = NewDisposeScope();
            using var session = lm.Blocks.OpenSession(new SessionOptions(1, ids.Length));
            session.StepAsync(lm.Ends.Embed(tensor(ids[..first], [1, first]))).AsTask().GetAwaiter().GetResult();   // [1, P-1, H]
            var rows = new List<Tensor>();
            for (int t = first; t < ids.Length - 1; t++)
            {
                var h = session.StepAsync(lm.Ends.Embed(tensor(new[] { ids[t] }, [1, 1]))).AsTask().GetAwaiter().GetResult();   // [1, 1, H]
                rows.Add(lm.Ends.Logits(lm.Ends.FinalNorm(h))[0]);                                   // [1, V]
            }
            result.Add(cat(rows, 0).log_softmax(-1).MoveToOuterDisposeScope());                     // [40, V]
        }
        return result;
    }

    static (int Agree, int Total, double MeanKl) Compare(List<Tensor> exact, List<Tensor> quant)
    {
        int agree = 0, total = 0;
        double kl = 0;
        for (int s = 0; s < exact.Count; s++)
        {
            using var scope = NewDisposeScope();
            var p = exact[s];
            var q = quant[s];
            agree += (int)p.argmax(-1).eq(q.argmax(-1)).sum().item<long>();
            total += (int)p.shape[0];
            kl += p.exp().mul(p - q).sum().item<float>();                          // Σ positions KL(p ‖ q)
        }
        return (agree, total, kl / total);
    }

    [SkippableTheory]
    [InlineData(QuantFormat.Int8, 119, 1e-3)]
    [InlineData(QuantFormat.Nf4, 100, 0.07)]
    public void Stories260KStaysCloseToF32(QuantFormat format, int minAgree, double maxKl)
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        using var exact = CausalLM.Load(Fixtures.Stories260KDir!);
        using var quant = CausalLM.Load(Fixtures.Stories260KDir!, new ModelLoadOptions(Quant: format));
        var p = LogProbs(exact);
        var q = LogProbs(quant);
        var steps = StepLogProbs(quant);
        foreach (var (path, logProbs) in new[] { ("forward", q), ("cached steps", steps) })
        {
            var (agree, total, kl) = Compare(p, logProbs);
            output.WriteLine($"{format.Name()} {path}: top-1 {agree}/{total}, mean KL {kl:E2}");
            Assert.Equal(120, total);
            Assert.True(agree >= minAgree, $"{format.Name()} {path}: top-1 agreement {agree}/{total}, below {minAgree}");
            Assert.True(kl <= maxKl, $"{format.Name()} {path}: mean KL {kl:E2} above {maxKl:E0}");
        }
        foreach (var t in p.Concat(q).Concat(steps)) t.Dispose();
    }

    [SkippableTheory]
    [InlineData(QuantFormat.Int8)]
    [InlineData(QuantFormat.Nf4)]
    public async Task GreedyGenerationRunsOnThePackedWeights(QuantFormat format)
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        using var quant = CausalLM.Load(Fixtures.Stories260KDir!, new ModelLoadOptions(Quant: format));
        // Decode steps take the in-place kernels (one row per step), the prompt the dequantized tiles.
        var result = await quant.GenerateAsync(["Once upon a time"], new GenerationOptions { MaxNewTokens = 20 });
        output.WriteLine($"{format.Name()}: {result.Texts[0]}");
        Assert.Equal(20, result.NewTokens[0].Count);
        Assert.StartsWith(",", result.Texts[0].TrimStart());
    }
}
