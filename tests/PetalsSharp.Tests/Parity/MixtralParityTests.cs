using PetalsSharp.Generation;
using PetalsSharp.Models;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Parity;

/// <summary>
/// The Mixtral engine against HF transformers outputs on the mixtral fixture (4 experts, top-2, GQA 4/2, rope_theta 1e6;
/// README tolerances).
/// </summary>
public sealed class MixtralParityTests : IClassFixture<MixtralParityTests.Model>
{
    public sealed class Model : IDisposable
    {
        public Reference Ref { get; } = Reference.Load("mixtral");
        public CausalLM Lm { get; }
        public Model() => Lm = CausalLM.Load(Ref.Dir);
        public void Dispose()
        {
            Lm.Dispose();
            Ref.Dispose();
        }
    }

    const double Atol = 1e-3, Rtol = 1e-4;
    readonly Model _m;

    public MixtralParityTests(Model m) => _m = m;

    [Fact]
    public void Logits_match_HF()
    {
        using var scope = NewDisposeScope();
        var logits = _m.Lm.Forward(_m.Ref.Longs("input_ids"));
        TensorAssert.Close(_m.Ref.Floats("logits"), logits, Atol, Rtol, "logits");
        Assert.True(TensorAssert.MaxAbsDiff(_m.Ref.Floats("logits"), logits) < 1e-4, "a careful f32 port is ~1e-5 off");
    }

    [Fact]
    public void Every_hidden_state_matches_HF()
    {
        using var scope = NewDisposeScope();
        using var result = _m.Lm.Inspect(_m.Ref.Longs("input_ids"));
        var expected = _m.Ref.Floats("hidden_states");                  // [L+1, B, T, H]
        Assert.Equal(expected.shape[0], result.HiddenStates.Count);
        for (int i = 0; i < result.HiddenStates.Count; i++)
            TensorAssert.Close(expected[i], result.HiddenStates[i]!, Atol, Rtol, $"hidden_states[{i}]");
        TensorAssert.Close(_m.Ref.Floats("logits"), result.Logits, Atol, Rtol, "logits");
    }

    [Fact]
    public void Every_block_output_matches_HF_block_by_block()
    {
        using var scope = NewDisposeScope();
        var expected = _m.Ref.Floats("block_outputs");                  // [L, B, T, H]
        var stack = (LocalBlockStack)_m.Lm.Blocks;
        var h = _m.Ref.Floats("hidden_states")[0];                      // embeddings [B, T, H]
        for (int i = 0; i < stack.Blocks.Count; i++)
        {
            var ctx = new StepContext((int)h.shape[0], (int)h.shape[1]);
            var output = stack.Blocks[i].Forward(h, ctx);
            TensorAssert.Close(expected[i], output, Atol, Rtol, $"block_outputs[{i}]");
            h = expected[i];                                            // feed HF's own input to the next block
        }
    }

    [Fact]
    public async Task Incremental_decoding_matches_HF_steps_and_cache()
    {
        using var scope = NewDisposeScope();
        var ends = _m.Lm.Ends;
        using var session = (LocalBlockSession)_m.Lm.Blocks.OpenSession(new SessionOptions(2, 16));
        await session.StepAsync(ends.Embed(_m.Ref.Longs("incremental.prefix_ids")));
        var pkv = _m.Ref["incremental.past_key_values_after_prefix"];
        for (int layer = 0; layer < session.Caches.Count; layer++)
        {
            TensorAssert.Close(Reference.ToTensor(pkv[layer].GetProperty("key"), ScalarType.Float32),
                session.Caches[layer].Keys.narrow(2, 0, 4), Atol, Rtol, $"key cache {layer}");
            TensorAssert.Close(Reference.ToTensor(pkv[layer].GetProperty("value"), ScalarType.Float32),
                session.Caches[layer].Values.narrow(2, 0, 4), Atol, Rtol, $"value cache {layer}");
        }
        for (int s = 0; s < 2; s++)
        {
            Assert.Equal(_m.Ref[$"incremental.steps.{s}.past_length"].GetInt32(), session.Position);
            var h = await session.StepAsync(ends.Embed(_m.Ref.Longs($"incremental.steps.{s}.input_ids")));
            var logits = ends.Logits(ends.FinalNorm(h));
            TensorAssert.Close(_m.Ref.Floats($"incremental.steps.{s}.logits"), logits, Atol, Rtol, $"step {s} logits");
        }
    }

    [Fact]
    public async Task Greedy_tokens_are_exact()
    {
        var prompts = _m.Ref.IdRows("generation.prompt_ids");
        var result = await _m.Lm.GenerateAsync(prompts, new GenerationOptions { MaxNewTokens = 12, IgnoreEos = true });
        Assert.Equal(_m.Ref.IdRows("generation.new_tokens"), result.NewTokens);
        Assert.Equal(_m.Ref.IdRows("generation.sequences"), result.Sequences);
    }

    [Fact]
    public void Rope_inverse_frequencies_match_HF()
    {
        var c = (MixtralConfig)_m.Lm.Config;
        var rotary = new Rotary(c.HeadDim, c.RopeTheta, c.RopeScaling, c.MaxPositionEmbeddings);
        var expected = _m.Ref["rope_inv_freq"].EnumerateArray().Select(x => x.GetSingle()).ToArray();
        var actual = rotary.InverseFrequencies();
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(actual[i] - expected[i]) <= 1e-6 * Math.Abs(expected[i]), $"inv_freq[{i}]: {actual[i]} vs {expected[i]}");
    }

    [Fact]
    public void The_fixture_routes_tokens_to_every_expert_and_two_per_token()
    {
        using var scope = NewDisposeScope();
        var c = (MixtralConfig)_m.Lm.Config;
        Assert.Equal((4, 2, (int?)null), (c.NumLocalExperts, c.NumExpertsPerTok, c.SlidingWindow));
        var block = (MixtralBlock)((LocalBlockStack)_m.Lm.Blocks).Blocks[0];
        var h = _m.Ref.Floats("hidden_states")[0].reshape(-1, c.HiddenSize);  // [B*T, H] (un-normed, enough to see routing)
        var (weights, experts) = block.Moe.Route(h);                        // [N, 2] [N, 2]
        TensorAssert.Close(ones(h.shape[0]), weights.sum(-1), 1e-6, 0, "renormalised weights");
        Assert.Equal(c.NumLocalExperts, experts.data<long>().Distinct().Count());
    }
}
