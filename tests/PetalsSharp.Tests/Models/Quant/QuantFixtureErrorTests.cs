using PetalsSharp.Models;
using PetalsSharp.Models.Quant;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models.Quant;

/// <summary>
/// The random-weight fixtures of every family, with their block linears packed: logits of a forward over fixed ids
/// against the same model in f32 (the table in docs/quantization.md). Random weights have no outliers and every
/// block adds its error, so this bounds the error loosely; stories260K's test measures quality.
/// </summary>
public class QuantFixtureErrorTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData("llama-gqa")]
    [InlineData("mixtral")]
    [InlineData("falcon-new")]
    [InlineData("bloom")]
    [InlineData("mistral")]
    [InlineData("qwen2")]
    public void Packed_logits_stay_near_f32(string fixture)
    {
        var dir = TestData.Path(fixture);
        using var exact = CausalLM.Load(dir);
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var ids = tensor(Enumerable.Range(0, 12).Select(i => (long)((i * 37 + 5) % exact.Config.VocabSize)).ToArray(), [1, 12]);
        var reference = exact.Forward(ids);                                                     // [1, T, V]
        double scale = reference.abs().max().item<float>();
        foreach (var format in new[] { QuantFormat.Int8, QuantFormat.Nf4 })
        {
            using var packed = CausalLM.Load(dir, new ModelLoadOptions(Quant: format));
            var logits = packed.Forward(ids);                                                   // [1, T, V]
            double maxAbs = (logits - reference).abs().max().item<float>();
            long sameTop = logits.argmax(-1).eq(reference.argmax(-1)).sum().item<long>();
            output.WriteLine($"{fixture} {format.Name()}: max |logit diff| {maxAbs:E2} (max |logit| {scale:F2}, relative {maxAbs / scale:E2}); same argmax at {sameTop}/12 positions");
            // Loose: random logits are nearly flat, so argmax flips easily; this catches a broken format, not a drift.
            Assert.True(maxAbs / scale < (format == QuantFormat.Int8 ? 0.1 : 0.8), $"{fixture} {format.Name()}: relative logit error {maxAbs / scale:E2}");
        }
    }
}
