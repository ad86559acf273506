using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Text.Tokenizers;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Parity;

/// <summary>
/// The real trained stories260K model (read from ../shared/fixtures, never committed): greedy continuations
/// equal HF's and llama2.c's, in ids and in text, with both tokenizer formats.
/// </summary>
public sealed class Stories260KTests
{
    [SkippableTheory]
    [InlineData(TokenizerFormat.SentencePiece)]
    [InlineData(TokenizerFormat.HfJson)]
    public async Task Greedy_continuations_match_the_reference_ids_and_text(TokenizerFormat format)
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        var dir = Fixtures.Stories260KDir!;
        using var r = Reference.LoadFrom(dir);
        using var loaded = CausalLM.Load(dir);
        using var lm = new CausalLM(loaded.Config, loaded.Ends, loaded.Blocks, TokenizerLoader.Load(dir, format));
        foreach (var c in r["continuations"].EnumerateArray())
        {
            var prompt = c.GetProperty("prompt").GetString()!;
            var result = await lm.GenerateAsync([prompt], new GenerationOptions { MaxNewTokens = 40, IgnoreEos = true });
            var expectedIds = c.GetProperty("new_token_ids").EnumerateArray().Select(x => x.GetInt32()).ToList();
            Assert.Equal(expectedIds, result.NewTokens[0]);
            Assert.Equal(c.GetProperty("new_text").GetString(), result.Texts[0]);
            Assert.Equal(c.GetProperty("full_text").GetString(), lm.Tokenizer!.Decode(result.Sequences[0]));
        }
    }

    [SkippableFact]
    public void Prompt_logits_match_HF()
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        using var r = Reference.LoadFrom(Fixtures.Stories260KDir!);
        using var lm = CausalLM.Load(Fixtures.Stories260KDir!);
        foreach (var c in r["continuations"].EnumerateArray())
        {
            using var scope = NewDisposeScope();
            var ids = Reference.ToTensor(c.GetProperty("prompt_ids"), ScalarType.Int64).unsqueeze(0);
            var expected = Reference.ToTensor(c.GetProperty("prompt_logits"), ScalarType.Float32);
            TensorAssert.Close(expected, lm.Forward(ids), 1e-3, 1e-4, "prompt_logits");
        }
    }
}
