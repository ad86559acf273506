using PetalsSharp.Models;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// A Mixtral block with 8 experts and random weights against a reference written the plain way: attention with an
/// explicit mask matrix, and the mixture of experts one token at a time (softmax, top-2, renormalise, weighted sum).
/// </summary>
public sealed class MixtralBlockTests
{
    const int Hidden = 32, Heads = 4, KvHeads = 2, HeadDim = 8, Experts = 8, Intermediate = 48;

    static MixtralConfig Config(int? window) => new()
    {
        ModelType = "mixtral", VocabSize = 300, HiddenSize = Hidden, NumLayers = 1, NumHeads = Heads, NumKvHeads = KvHeads,
        HeadDim = HeadDim, IntermediateSize = Intermediate, NumLocalExperts = Experts, NumExpertsPerTok = 2,
        SlidingWindow = window, EosTokenIds = [2],
    };

    /// <summary>Block 0's tensors drawn like the fixtures (std 1.5/√in, norms 1 + 0.1·N).</summary>
    static Dictionary<string, Tensor> Weights(MixtralConfig c, int seed)
    {
        var g = new Generator((ulong)seed);
        return MixtralFamily.Instance.BlockTensors(c, 0).ToDictionary(s => s.Name, s =>
        {
            var n = randn(s.Shape, generator: g);
            return s.Role == TensorRole.NormScale ? n * 0.1 + 1.0 : n * (s.Gain / Math.Sqrt(s.Shape[^1]));
        });
    }

    /// <summary>A block over copies: a block's parameters take over the tensors they are built from.</summary>
    static DecoderBlock Block(MixtralConfig c, Dictionary<string, Tensor> w) =>
        MixtralFamily.Instance.CreateBlock(c, 0, w.ToDictionary(kv => kv.Key, kv => kv.Value.clone()));

    [Fact]
    public void Block_output_equals_a_token_by_token_reference()
    {
        using var scope = NewDisposeScope();
        var c = Config(window: null);
        var w = Weights(c, seed: 17);
        var block = Block(c, w);
        manual_seed(4);
        var x = randn(2, 9, Hidden);                                                // [B, T, H]
        var actual = block.Forward(x, new StepContext(2, 9));
        TensorAssert.Close(Reference(c, w, x), actual, 1e-4, 1e-4, "block output");
        // The router really spreads the tokens: a test where two experts take everything would prove little.
        var (_, ids) = ((MixtralBlock)block).Moe.Route(x.reshape(-1, Hidden));
        Assert.True(ids.data<long>().Distinct().Count() >= 6, "routing uses most of the 8 experts");
    }

    [Fact]
    public void Sliding_window_changes_the_output_and_matches_an_explicitly_masked_reference()
    {
        using var scope = NewDisposeScope();
        var windowed = Config(window: 3);
        var w = Weights(windowed, seed: 23);
        manual_seed(6);
        var x = randn(2, 9, Hidden);                                                // [B, T, H], T > window
        var withWindow = Block(windowed, w).Forward(x, new StepContext(2, 9));
        var without = Block(Config(null), w).Forward(x, new StepContext(2, 9));
        TensorAssert.Close(Reference(windowed, w, x), withWindow, 1e-4, 1e-4, "windowed block output");
        // The first `window` positions see every earlier key either way; later ones must differ.
        TensorAssert.Close(without.narrow(1, 0, 3), withWindow.narrow(1, 0, 3), 1e-5, 0, "positions inside the window");
        Assert.True(TensorAssert.MaxAbsDiff(without.narrow(1, 3, 6), withWindow.narrow(1, 3, 6)) > 1e-2, "the window must hide old keys");
    }

    [Theory]
    [InlineData(3)]
    [InlineData(null)]
    public void Cached_steps_equal_the_full_forward(int? window)
    {
        using var scope = NewDisposeScope();
        var c = Config(window);
        var block = Block(c, Weights(c, seed: 29));
        manual_seed(8);
        var x = randn(2, 9, Hidden);                                                // [B, T, H]
        var full = block.Forward(x, new StepContext(2, 9));
        using var cache = block.AllocateCache(2, 16);
        int past = 0;
        foreach (var n in new[] { 4, 1, 1, 2, 1 })                                  // prefill, single tokens, a chunk
        {
            var step = block.Forward(x.narrow(1, past, n), new StepContext(2, n, past), cache);
            TensorAssert.Close(full.narrow(1, past, n), step, 1e-5, 1e-5, $"tokens [{past}, {past + n})");
            past += n;
        }
    }

    // ------------------------------ the plain reference ------------------------------

    static Tensor Reference(MixtralConfig c, Dictionary<string, Tensor> w, Tensor x)
    {
        const string p = "model.layers.0.";
        long b = x.shape[0], t = x.shape[1];
        Tensor Rms(Tensor v, Tensor scale) => v / (v.pow(2).mean([-1L], keepdim: true) + c.RmsNormEps).sqrt() * scale;
        var xn = Rms(x, w[p + "input_layernorm.weight"]);                            // [B, T, H]
        var q = xn.matmul(w[p + "self_attn.q_proj.weight"].t()).view(b, t, Heads, HeadDim);     // [B, T, nh, D]
        var k = xn.matmul(w[p + "self_attn.k_proj.weight"].t()).view(b, t, KvHeads, HeadDim);   // [B, T, kvH, D]
        var v = xn.matmul(w[p + "self_attn.v_proj.weight"].t()).view(b, t, KvHeads, HeadDim);   // [B, T, kvH, D]
        q = Rotate(q, c.RopeTheta);
        k = Rotate(k, c.RopeTheta);
        var allowed = new float[t, t];                                                // 0 or -inf, [query, key]
        for (int i = 0; i < t; i++)
            for (int j = 0; j < t; j++)
                allowed[i, j] = j <= i && (c.SlidingWindow is not { } win || j > i - win) ? 0f : float.NegativeInfinity;
        var mask = tensor(allowed);                                                   // [T, T]
        var heads = new List<Tensor>();
        for (int h = 0; h < Heads; h++)
        {
            int kvh = h / (Heads / KvHeads);
            var qh = q.select(2, h);                                                   // [B, T, D]
            var scores = qh.matmul(k.select(2, kvh).transpose(1, 2)) / Math.Sqrt(HeadDim) + mask; // [B, T, T]
            heads.Add(scores.softmax(-1).matmul(v.select(2, kvh)));                    // [B, T, D]
        }
        var attn = cat(heads, -1).matmul(w[p + "self_attn.o_proj.weight"].t());      // [B, T, H]
        var hres = x + attn;                                                          // [B, T, H]
        var y = Rms(hres, w[p + "post_attention_layernorm.weight"]).reshape(b * t, Hidden); // [N, H]
        var rows = new List<Tensor>();
        for (long n = 0; n < b * t; n++)
        {
            var token = y[n];                                                         // [H]
            var logits = w[p + "block_sparse_moe.gate.weight"].matmul(token).data<float>().ToArray(); // E
            var max = logits.Max();
            var probs = logits.Select(l => Math.Exp(l - max)).ToArray();
            var total = probs.Sum();
            var top = Enumerable.Range(0, Experts).OrderByDescending(e => probs[e]).Take(2).ToArray();
            var kept = top.Sum(e => probs[e] / total);
            var row = zeros(Hidden);                                                  // [H]
            foreach (var e in top)
            {
                var ex = $"{p}block_sparse_moe.experts.{e}.";
                var a = w[ex + "w1.weight"].matmul(token);                            // [I]
                var gated = a * a.sigmoid() * w[ex + "w3.weight"].matmul(token);      // [I]
                row = row + w[ex + "w2.weight"].matmul(gated) * (probs[e] / total / kept);
            }
            rows.Add(row);
        }
        return hres + stack(rows).view(b, t, Hidden);                                         // [B, T, H]
    }

    /// <summary>Rotary on <c>[B, T, heads, D]</c> at positions 0..T-1, pairing dimension i with i + D/2.</summary>
    static Tensor Rotate(Tensor v, double theta)
    {
        long t = v.shape[1], half = HeadDim / 2;
        var inv = tensor(Enumerable.Range(0, (int)half).Select(i => (float)(1.0 / Math.Pow(theta, 2.0 * i / HeadDim))).ToArray());
        var angle = arange(t, dtype: ScalarType.Float32).unsqueeze(1) * inv;         // [T, D/2]
        var cos = angle.cos().view(1, t, 1, half);
        var sin = angle.sin().view(1, t, 1, half);
        var x1 = v.narrow(-1, 0, half);
        var x2 = v.narrow(-1, half, half);
        return cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1);                  // [B, T, heads, D]
    }
}
