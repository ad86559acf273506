using PetalsSharp.Generation;
using PetalsSharp.Models;
using Xunit;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PetalsSharp.Tests.Parity;

/// <summary>A fixture folder loaded once per test class: its reference.json and the local model.</summary>
public abstract class FixtureModel : IDisposable
{
    protected FixtureModel(string name)
    {
        Ref = Reference.Load(name);
        Lm = CausalLM.Load(Ref.Dir);
    }

    public Reference Ref { get; }
    public CausalLM Lm { get; }

    public void Dispose()
    {
        Lm.Dispose();
        Ref.Dispose();
    }
}

/// <summary>
/// The checks every random-weight fixture gets against HF transformers (README tolerances): logits, hidden
/// states, block by block outputs, the KV cache and incremental steps, greedy tokens and shallow prompt tuning.
/// </summary>
public abstract class FixtureParity<TModel>(TModel m) where TModel : FixtureModel
{
    protected const double Atol = 1e-3, Rtol = 1e-4;
    protected TModel M { get; } = m;

    /// <summary>HF's cached keys/values <c>[B, heads, 4, D]</c> as this engine stores them (HF may repeat KV heads).</summary>
    protected virtual Tensor CacheAsStored(Tensor hfCache) => hfCache;

    [Fact]
    public void Logits_match_HF()
    {
        using var scope = NewDisposeScope();
        var logits = M.Lm.Forward(M.Ref.Longs("input_ids"));
        TensorAssert.Close(M.Ref.Floats("logits"), logits, Atol, Rtol, "logits");
        Assert.True(TensorAssert.MaxAbsDiff(M.Ref.Floats("logits"), logits) < 1e-4, "a careful f32 port is ~1e-5 off");
    }

    [Fact]
    public void Every_hidden_state_matches_HF()
    {
        using var scope = NewDisposeScope();
        using var result = M.Lm.Inspect(M.Ref.Longs("input_ids"));
        var expected = M.Ref.Floats("hidden_states");                  // [L+1, B, T, H]
        Assert.Equal(expected.shape[0], result.HiddenStates.Count);
        for (int i = 0; i < result.HiddenStates.Count; i++)
            TensorAssert.Close(expected[i], result.HiddenStates[i]!, Atol, Rtol, $"hidden_states[{i}]");
    }

    [Fact]
    public void Every_block_output_matches_HF_block_by_block()
    {
        using var scope = NewDisposeScope();
        var expected = M.Ref.Floats("block_outputs");                  // [L, B, T, H]
        var stack = (LocalBlockStack)M.Lm.Blocks;
        var h = M.Ref.Floats("hidden_states")[0];                      // first block's input [B, T, H]
        for (int i = 0; i < stack.Blocks.Count; i++)
        {
            var output = stack.Blocks[i].Forward(h, new StepContext((int)h.shape[0], (int)h.shape[1]));
            TensorAssert.Close(expected[i], output, Atol, Rtol, $"block_outputs[{i}]");
            h = expected[i];                                           // feed HF's own input to the next block
        }
    }

    [Fact]
    public async Task Incremental_decoding_matches_HF_steps_and_cache()
    {
        using var scope = NewDisposeScope();
        var ends = M.Lm.Ends;
        using var session = (LocalBlockSession)M.Lm.Blocks.OpenSession(new SessionOptions(2, 16));
        await session.StepAsync(ends.Embed(M.Ref.Longs("incremental.prefix_ids")));
        var pkv = M.Ref["incremental.past_key_values_after_prefix"];
        for (int layer = 0; layer < session.Caches.Count; layer++)
        {
            var (keys, values) = session.Caches[layer].Read(4);                          // [B, kvH, 4, D] [B, kvH, 4, D]
            TensorAssert.Close(CacheAsStored(Reference.ToTensor(pkv[layer].GetProperty("key"), ScalarType.Float32)),
                keys, Atol, Rtol, $"key cache {layer}");
            TensorAssert.Close(CacheAsStored(Reference.ToTensor(pkv[layer].GetProperty("value"), ScalarType.Float32)),
                values, Atol, Rtol, $"value cache {layer}");
        }
        for (int s = 0; s < 2; s++)
        {
            Assert.Equal(M.Ref[$"incremental.steps.{s}.past_length"].GetInt32(), session.Position);
            var h = await session.StepAsync(ends.Embed(M.Ref.Longs($"incremental.steps.{s}.input_ids")));
            var logits = ends.Logits(ends.FinalNorm(h));
            TensorAssert.Close(M.Ref.Floats($"incremental.steps.{s}.logits"), logits, Atol, Rtol, $"step {s} logits");
        }
    }

    [Fact]
    public async Task Greedy_tokens_are_exact()
    {
        var prompts = M.Ref.IdRows("generation.prompt_ids");
        var result = await M.Lm.GenerateAsync(prompts, new GenerationOptions { MaxNewTokens = 12, IgnoreEos = true });
        Assert.Equal(M.Ref.IdRows("generation.new_tokens"), result.NewTokens);
        Assert.Equal(M.Ref.IdRows("generation.sequences"), result.Sequences);
    }

    [Fact]
    public void Prompt_tuning_forward_loss_and_gradient_match_HF()
    {
        using var scope = NewDisposeScope();
        using var grad = enable_grad();   // grad mode is per thread, and xunit runs this on a pool thread
        var ends = M.Lm.Ends;
        var ids = M.Ref.Longs("input_ids");                                                 // [B, T]
        long b = ids.shape[0], t = ids.shape[1];
        var prompt = M.Ref.Floats("prompt_tuning.prompt_embeddings").requires_grad_(true);  // [4, H]
        var input = cat([prompt.unsqueeze(0).expand(b, -1, -1), ends.EmbedTokens(ids)], 1); // [B, 4+T, H]
        var h = M.Lm.Blocks.Forward(ends.AfterEmbedding(input));                           // [B, 4+T, H]
        var logits = ends.Logits(ends.FinalNorm(h)).narrow(1, 4, t);                       // [B, T, V]
        TensorAssert.Close(M.Ref.Floats("prompt_tuning.logits_real_positions"), logits, Atol, Rtol, "prompt-tuned logits");
        var scored = logits.narrow(1, 0, t - 1).reshape(-1, logits.shape[^1]);             // [B*(T-1), V]
        var loss = F.cross_entropy(scored, ids.narrow(1, 1, t - 1).reshape(-1));
        Assert.True(Math.Abs(loss.item<float>() - M.Ref["prompt_tuning.loss"].GetSingle()) <= 1e-4 + 1e-5 * Math.Abs(loss.item<float>()),
            $"loss {loss.item<float>()} vs {M.Ref["prompt_tuning.loss"].GetSingle()}");
        loss.backward();
        TensorAssert.Close(M.Ref.Floats("prompt_tuning.grad_prompt_embeddings"), prompt.grad!, 1e-4, 1e-3, "prompt gradient");
    }
}
