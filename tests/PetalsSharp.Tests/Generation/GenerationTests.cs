using PetalsSharp.Generation;
using PetalsSharp.Models;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Generation;

/// <summary>The generation loop on the llama-gqa fixture: padding, sampling, custom processors, streaming, hidden states.</summary>
public sealed class GenerationTests : IClassFixture<PetalsSharp.Tests.Models.GenerationModel>
{
    static readonly IReadOnlyList<int> RowA = [5, 77, 130, 9, 200, 41, 18];
    static readonly IReadOnlyList<int> RowB = [250, 3, 64, 101];
    readonly CausalLM _lm;

    public GenerationTests(PetalsSharp.Tests.Models.GenerationModel m) => _lm = m.Lm;

    static GenerationOptions Greedy(int n) => new() { MaxNewTokens = n, IgnoreEos = true };

    [Fact]
    public async Task Left_padded_batch_gives_each_row_its_own_tokens()
    {
        var batch = await _lm.GenerateAsync([RowA, RowB], Greedy(8));
        var a = await _lm.GenerateAsync([RowA], Greedy(8));
        var b = await _lm.GenerateAsync([RowB], Greedy(8));
        Assert.Equal(a.NewTokens[0], batch.NewTokens[0]);
        Assert.Equal(b.NewTokens[0], batch.NewTokens[1]);
        Assert.Equal(RowB.Concat(b.NewTokens[0]), batch.Sequences[1]);
    }

    [Fact]
    public void Left_padded_forward_matches_the_unpadded_row()
    {
        using var scope = NewDisposeScope();
        var padded = tensor(new long[] { 0, 0, 0, 250, 3, 64, 101 }, [1, 7]);
        var alone = _lm.Forward(tensor(RowB.Select(i => (long)i).ToArray(), [1, 4]));
        var withPad = _lm.Forward(padded, [3]);
        TensorAssert.Close(alone, withPad.narrow(1, 3, 4), 1e-4, 1e-4, "padded logits");
    }

    [Fact]
    public async Task Seeded_sampling_reproduces_and_top_k_1_is_greedy()
    {
        var opts = new GenerationOptions { MaxNewTokens = 10, DoSample = true, Temperature = 1.5, Seed = 42, IgnoreEos = true };
        var first = await _lm.GenerateAsync([RowA, RowB], opts);
        var again = await _lm.GenerateAsync([RowA, RowB], opts);
        Assert.Equal(first.NewTokens, again.NewTokens);
        var other = await _lm.GenerateAsync([RowA, RowB], opts with { Seed = 7 });
        Assert.NotEqual(first.NewTokens, other.NewTokens);
        var topK1 = await _lm.GenerateAsync([RowA], opts with { TopK = 1 });
        var greedy = await _lm.GenerateAsync([RowA], Greedy(10));
        Assert.Equal(greedy.NewTokens, topK1.NewTokens);
        var topP = await _lm.GenerateAsync([RowA], opts with { TopP = 1e-6 });
        Assert.Equal(greedy.NewTokens, topP.NewTokens);
    }

    [Fact]
    public async Task A_custom_logits_processor_bans_tokens()
    {
        var greedy = await _lm.GenerateAsync([RowA], Greedy(6));
        var banned = greedy.NewTokens[0][0];
        var ban = new LogitsProcessor((_, scores) =>
        {
            var s = scores.clone();
            s[TensorIndex.Colon, banned] = tensor(float.NegativeInfinity);
            return s;
        });
        var result = await _lm.GenerateAsync([RowA], Greedy(6) with { LogitsProcessors = [ban] });
        Assert.DoesNotContain(banned, result.NewTokens[0]);
    }

    sealed class CountingSampler : ITokenSampler
    {
        int _next = 10;
        public int[] Sample(Tensor scores) => Enumerable.Repeat(_next++, (int)scores.shape[0]).ToArray();
    }

    [Fact]
    public async Task A_custom_sampler_chooses_the_tokens()
    {
        var result = await _lm.GenerateAsync([RowA, RowB], Greedy(4) with { Sampler = new CountingSampler() });
        Assert.Equal([10, 11, 12, 13], result.NewTokens[0]);
        Assert.Equal([10, 11, 12, 13], result.NewTokens[1]);
    }

    [Fact]
    public async Task Streaming_yields_the_same_tokens_as_generate()
    {
        var whole = await _lm.GenerateAsync([RowA, RowB], Greedy(7));
        var streamed = new List<int>[] { [], [] };
        await foreach (var step in _lm.StreamAsync([RowA, RowB], Greedy(7)))
            for (int b = 0; b < 2; b++)
                if (step.Tokens[b] is { } t) streamed[b].Add(t);
        Assert.Equal(whole.NewTokens[0], streamed[0]);
        Assert.Equal(whole.NewTokens[1], streamed[1]);
    }

    [Fact]
    public async Task Eos_stops_a_row_and_max_new_tokens_the_rest()
    {
        var greedy = await _lm.GenerateAsync([RowA, RowB], Greedy(5));
        var eos = greedy.NewTokens[0][2];
        var result = await _lm.GenerateAsync([RowA, RowB], new GenerationOptions { MaxNewTokens = 5, EosTokenIds = [eos] });
        Assert.Equal(greedy.NewTokens[0].Take(3), result.NewTokens[0]);
        Assert.Equal(FinishReason.EndOfSequence, result.FinishReasons[0]);
        if (!greedy.NewTokens[1].Contains(eos))
        {
            Assert.Equal(greedy.NewTokens[1], result.NewTokens[1]);
            Assert.Equal(FinishReason.Length, result.FinishReasons[1]);
        }
    }

    [Fact]
    public async Task Hidden_states_at_any_layer_match_a_forward_over_the_sequence()
    {
        var layers = new[] { 0, 2, 3 };
        var result = await _lm.GenerateAsync([RowA], Greedy(5) with { HiddenStateLayers = layers });
        var fed = result.Sequences[0].Take(result.Sequences[0].Count - 1).Select(i => (long)i).ToArray();
        using var inspect = _lm.Inspect(tensor(fed, [1, fed.Length]));
        foreach (var l in layers)
            TensorAssert.Close(inspect.HiddenStates[l]!, result.HiddenStates[l], 1e-4, 1e-4, $"layer {l}");
    }

    [Fact]
    public async Task Bad_options_are_rejected()
    {
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => _lm.GenerateAsync([RowA], new GenerationOptions { TopP = 0 }));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => _lm.GenerateAsync([RowA], new GenerationOptions { Temperature = -1 }));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => _lm.GenerateAsync([RowA], new GenerationOptions { HiddenStateLayers = [9] }));
        await Assert.ThrowsAsync<ArgumentException>(() => _lm.GenerateAsync([Array.Empty<int>()], new GenerationOptions()));
        Assert.Throws<ArgumentOutOfRangeException>(() => _lm.Forward(tensor(new long[] { 1, 999 }, [1, 2])));
    }
}
