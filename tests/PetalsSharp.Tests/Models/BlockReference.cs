using PetalsSharp.Models;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// Plain, slow restatements of the Falcon and BLOOM blocks for layouts no HF fixture covers: each head's q, k and
/// v rows are picked out of the fused projection by explicit index arithmetic, attention runs head by head with
/// an explicit causal loop-free mask, LayerNorm and rotary are written out. Cache-free, positions 0..T-1.
/// </summary>
public static class BlockReference
{
    /// <summary>Random weights for every tensor the family lists for block 0, drawn like create-model draws them.</summary>
    public static Dictionary<string, Tensor> RandomWeights(ModelConfig c, int seed)
    {
        var g = new Generator((ulong)seed);
        var weights = new Dictionary<string, Tensor>();
        foreach (var spec in c.Family.BlockTensors(c, 0))
        {
            var n = randn(spec.Shape, generator: g);
            weights[spec.Name] = spec.Role switch
            {
                TensorRole.Matrix => n * (spec.Gain / Math.Sqrt(spec.Shape[^1])),
                TensorRole.NormScale => n * 0.1 + 1.0,
                _ => n * 0.1,
            };
        }
        return weights;
    }

    public static Tensor LayerNorm(Tensor x, Tensor w, Tensor b, double eps)
    {
        var mean = x.mean([-1L], keepdim: true);                               // [B, T, 1]
        var variance = (x - mean).pow(2).mean([-1L], keepdim: true);           // [B, T, 1]
        return (x - mean) / (variance + eps).sqrt() * w + b;                   // [B, T, H]
    }

    /// <summary>Rows [start, start+count) of a linear layer: <c>x W[rows]^T + b[rows]</c>.</summary>
    static Tensor Rows(Tensor x, Tensor w, Tensor? b, long start, long count)
    {
        var y = matmul(x, w.narrow(0, start, count).t());                       // [B, T, count]
        return b is null ? y : y + b.narrow(0, start, count);
    }

    static Tensor Rotate(Tensor x, double theta)
    {
        long t = x.shape[1], d = x.shape[2], half = d / 2;
        var inv = (arange(0, half, dtype: ScalarType.Float64) * (-2.0 * Math.Log(theta) / d)).exp();   // [D/2]
        var angle = (arange(0, t, dtype: ScalarType.Float64).unsqueeze(1) * inv).to(ScalarType.Float32); // [T, D/2]
        var (cos, sin) = (angle.cos(), angle.sin());
        var (x1, x2) = (x.narrow(2, 0, half), x.narrow(2, half, half));                            // [B, T, D/2]
        return cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], 2);                                 // [B, T, D]
    }

    /// <summary>One head: softmax(((q·k + preBias_j)·scale + postBias_j), causal) · v. Biases <c>[T]</c> per key.</summary>
    static Tensor Head(Tensor q, Tensor k, Tensor v, double scale, Tensor? preBias, Tensor? postBias)
    {
        long t = q.shape[1];
        var scores = matmul(q, k.transpose(1, 2));                                                 // [B, T, T]
        if (preBias is not null) scores = scores + preBias;
        scores = scores * scale;
        if (postBias is not null) scores = scores + postBias;
        var future = ones(t, t, dtype: ScalarType.Bool).triu(1);                                   // [T, T]
        return matmul(scores.masked_fill(future, float.NegativeInfinity).softmax(-1), v);           // [B, T, D]
    }

    /// <summary>Key biases <c>[T]</c>: slope·j, rounded to bfloat16 the way HF's Falcon does when asked.</summary>
    static Tensor AlibiRow(double slope, long t, bool bf16)
    {
        var pos = arange(0, t, dtype: ScalarType.Float32);                                          // [T]
        if (!bf16) return pos * (float)slope;
        var s = tensor((float)slope).to(ScalarType.BFloat16);
        return (pos.to(ScalarType.BFloat16) * s).to(ScalarType.Float32);
    }

    /// <summary>Slopes straight from the ALiBi paper's recipe (as HF implements it), in double.</summary>
    public static double[] PaperSlopes(int n)
    {
        static double[] PowerOfTwo(int m) => Enumerable.Range(1, m).Select(i => Math.Pow(2, -8.0 * i / m)).ToArray();
        int p = (int)Math.Pow(2, Math.Floor(Math.Log2(n)));
        if (p == n) return PowerOfTwo(n);
        return PowerOfTwo(p).Concat(PowerOfTwo(2 * p).Where((_, i) => i % 2 == 0).Take(n - p)).ToArray();
    }

    public static Tensor Falcon(FalconConfig c, IReadOnlyDictionary<string, Tensor> w, Tensor x)
    {
        const string p = "transformer.h.0.";
        Tensor W(string n) => w[p + n + ".weight"];
        Tensor? B(string n) => w.TryGetValue(p + n + ".bias", out var b) ? b : null;
        Tensor Ln(string n, Tensor h) => LayerNorm(h, W(n), B(n)!, c.LayerNormEpsilon);
        int nh = c.NumHeads, d = c.HeadDim, kvh = c.NumKvHeads, g = nh / kvh;
        var slopes = PaperSlopes(nh);

        Tensor Attention(Tensor h)
        {
            var heads = new List<Tensor>();
            for (int head = 0; head < nh; head++)
            {
                // First row of this head's q and of its k and v in the fused projection, per layout.
                long qRow, kRow, vRow;
                if (c.NewDecoderArchitecture)
                {
                    int group = head / g;
                    qRow = (group * (g + 2) + head % g) * d; kRow = (group * (g + 2) + g) * d; vRow = kRow + d;
                }
                else if (c.MultiQuery) { qRow = head * d; kRow = nh * d; vRow = (nh + 1) * d; }
                else { qRow = 3 * head * d; kRow = qRow + d; vRow = qRow + 2 * d; }
                var q = Rows(h, W("self_attention.query_key_value"), B("self_attention.query_key_value"), qRow, d);
                var k = Rows(h, W("self_attention.query_key_value"), B("self_attention.query_key_value"), kRow, d);
                var v = Rows(h, W("self_attention.query_key_value"), B("self_attention.query_key_value"), vRow, d);
                if (!c.Alibi) (q, k) = (Rotate(q, c.RopeTheta), Rotate(k, c.RopeTheta));
                var pre = c.Alibi ? AlibiRow(slopes[head], h.shape[1], bf16: true) : null;
                heads.Add(Head(q, k, v, 1 / Math.Sqrt(d), pre, null));
            }
            return Rows(cat(heads, 2), W("self_attention.dense"), B("self_attention.dense"), 0, c.HiddenSize);
        }
        Tensor Mlp(Tensor h)
        {
            var up = Rows(h, W("mlp.dense_h_to_4h"), B("mlp.dense_h_to_4h"), 0, c.FfnHiddenSize);
            var gelu = up * 0.5 * (1.0 + special.erf(up / Math.Sqrt(2)));
            return Rows(gelu, W("mlp.dense_4h_to_h"), B("mlp.dense_4h_to_h"), 0, c.HiddenSize);
        }

        if (!c.ParallelAttn)
        {
            var mid = x + Attention(Ln("input_layernorm", x));
            return mid + Mlp(Ln("post_attention_layernorm", mid));
        }
        var xa = Ln(c.TwoInputNorms ? "ln_attn" : "input_layernorm", x);
        var xm = c.TwoInputNorms ? Ln("ln_mlp", x) : xa;
        return x + Attention(xa) + Mlp(xm);
    }

    public static Tensor Bloom(BloomConfig c, IReadOnlyDictionary<string, Tensor> w, Tensor x)
    {
        const string p = "transformer.h.0.";
        Tensor W(string n) => w[p + n + ".weight"];
        Tensor B(string n) => w[p + n + ".bias"];
        int nh = c.NumHeads, d = c.HeadDim;
        var slopes = PaperSlopes(nh);
        var ln1 = LayerNorm(x, W("input_layernorm"), B("input_layernorm"), c.LayerNormEpsilon);
        var heads = new List<Tensor>();
        for (int head = 0; head < nh; head++)
        {
            long row = 3 * head * d;                                    // per head: q rows, k rows, v rows
            var q = Rows(ln1, W("self_attention.query_key_value"), B("self_attention.query_key_value"), row, d);
            var k = Rows(ln1, W("self_attention.query_key_value"), B("self_attention.query_key_value"), row + d, d);
            var v = Rows(ln1, W("self_attention.query_key_value"), B("self_attention.query_key_value"), row + 2 * d, d);
            heads.Add(Head(q, k, v, 1 / Math.Sqrt(d), null, AlibiRow(slopes[head], x.shape[1], bf16: false)));
        }
        var attn = Rows(cat(heads, 2), W("self_attention.dense"), B("self_attention.dense"), 0, c.HiddenSize);
        var mid = (c.ApplyResidualConnectionPostLayernorm ? ln1 : x) + attn;
        var ln2 = LayerNorm(mid, W("post_attention_layernorm"), B("post_attention_layernorm"), c.LayerNormEpsilon);
        var up = Rows(ln2, W("mlp.dense_h_to_4h"), B("mlp.dense_h_to_4h"), 0, 4 * c.HiddenSize);
        var gelu = up * 0.5 * (1.0 + (up * Math.Sqrt(2 / Math.PI) * (1.0 + 0.044715 * up * up)).tanh());
        return (c.ApplyResidualConnectionPostLayernorm ? ln2 : mid) + Rows(gelu, W("mlp.dense_4h_to_h"), B("mlp.dense_4h_to_h"), 0, c.HiddenSize);
    }
}
