using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PetalsSharp.Models;

// ============================== family ==============================

/// <summary>Falcon (both layouts): checkpoint names and shapes, and builders for the block and the client-side ends.</summary>
public sealed class FalconFamily : IModelFamily, Lora.ILoraTargets
{
    public static readonly FalconFamily Instance = new();

    public IReadOnlyList<string> LoraModules(ModelConfig config) =>
        ["self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"];

    public IReadOnlyList<string> ModelTypes => ["falcon", "RefinedWeb", "RefinedWebModel"];

    public ModelConfig ParseConfig(JsonConfigReader reader) => FalconConfig.Parse(reader);

    public IReadOnlyList<TensorSpec> BlockTensors(ModelConfig config, int index)
    {
        var c = (FalconConfig)config;
        long h = c.HiddenSize, f = c.FfnHiddenSize;
        var p = $"transformer.h.{index}.";
        var specs = new List<TensorSpec>();
        void Norm(string name) => specs.AddRange([new(p + name + ".weight", [h], TensorRole.NormScale), new(p + name + ".bias", [h], TensorRole.Bias)]);
        void Linear(string name, long rows, long cols)
        {
            specs.Add(new(p + name + ".weight", [rows, cols], TensorRole.Matrix));
            if (c.Bias) specs.Add(new(p + name + ".bias", [rows], TensorRole.Bias));
        }
        foreach (var norm in FalconBlock.NormNames(c)) Norm(norm);
        Linear("self_attention.query_key_value", c.FusedQkvSize, h);
        Linear("self_attention.dense", h, h);
        Linear("mlp.dense_h_to_4h", f, h);
        Linear("mlp.dense_4h_to_h", h, f);
        return specs;
    }

    public IReadOnlyList<TensorSpec> EndTensors(ModelConfig config)
    {
        long v = config.VocabSize, h = config.HiddenSize;
        var specs = new List<TensorSpec>
        {
            new("transformer.word_embeddings.weight", [v, h], TensorRole.Embedding),
            new("transformer.ln_f.weight", [h], TensorRole.NormScale),
            new("transformer.ln_f.bias", [h], TensorRole.Bias),
        };
        if (!config.TieWordEmbeddings) specs.Add(new("lm_head.weight", [v, h], TensorRole.Matrix));
        return specs;
    }

    public DecoderBlock CreateBlock(ModelConfig config, int index, IReadOnlyDictionary<string, Tensor> weights) =>
        new FalconBlock((FalconConfig)config, index, weights);

    public ModelEnds CreateEnds(ModelConfig config, IReadOnlyDictionary<string, Tensor> w)
    {
        var c = (FalconConfig)config;
        var embed = w["transformer.word_embeddings.weight"];
        var final = new Norm(w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], c.LayerNormEpsilon, rms: false);
        return new ModelEnds(config, embed, null, final, c.TieWordEmbeddings ? embed : w["lm_head.weight"]);
    }

    /// <summary>The 40B/180B layout (grouped KV heads, two norms, parallel attention and MLP), rotary, no biases.</summary>
    public ModelConfig CreateConfig(ModelShape s) => new FalconConfig
    {
        ModelType = "falcon", VocabSize = s.VocabSize, HiddenSize = s.HiddenSize, NumLayers = s.NumLayers,
        NumHeads = s.NumHeads, NumKvHeads = s.NumKvHeads ?? s.NumHeads, HeadDim = s.HiddenSize / s.NumHeads,
        FfnHiddenSize = s.IntermediateSize ?? 4 * s.HiddenSize, NewDecoderArchitecture = true, NumLnInParallelAttn = 2,
        MaxPositionEmbeddings = s.MaxPositions, TieWordEmbeddings = s.TieEmbeddings,
        BosTokenId = s.VocabSize - 1, EosTokenIds = [s.VocabSize - 1],
    };

    /// <summary>About 100M parameters: hidden 768, 12 blocks of 12 query / 4 KV heads (6.3M each), vocab 32000 tied.</summary>
    public ModelConfig BenchmarkConfig() => CreateConfig(new ModelShape(768, 12, 12, 4, null, 32000, 2048, TieEmbeddings: true));
}

// ============================== block ==============================

/// <summary>
/// Falcon block. 40B/180B layout: <c>ln_attn</c> and <c>ln_mlp</c> (or one shared norm) feed attention and MLP
/// in parallel, both added to the residual. 7B layout: one <c>input_layernorm</c> feeds both in parallel, or,
/// with <c>parallel_attn</c> false, attention, residual, <c>post_attention_layernorm</c>, MLP, residual.
/// Rotary or ALiBi; exact-erf GELU MLP.
/// </summary>
public sealed class FalconBlock : DecoderBlock
{
    readonly FalconConfig _c;
    readonly Rotary? _rotary;
    readonly Dictionary<string, (Parameter Weight, Parameter Bias)> _norms = new();  // [H] [H]
    readonly Parameter query_key_value, dense, dense_h_to_4h, dense_4h_to_h;          // [(nh+2kv)*D, H] [H, H] [F, H] [H, F]
    readonly Parameter? query_key_value_bias, dense_bias, dense_h_to_4h_bias, dense_4h_to_h_bias;

    /// <summary>The block's LayerNorms for this layout, in checkpoint naming.</summary>
    public static IReadOnlyList<string> NormNames(FalconConfig c) =>
        c.TwoInputNorms ? ["ln_attn", "ln_mlp"]
        : c.ParallelAttn ? ["input_layernorm"]
        : ["input_layernorm", "post_attention_layernorm"];

    public FalconBlock(FalconConfig c, int index, IReadOnlyDictionary<string, Tensor> w) : base($"h.{index}", index)
    {
        _c = c;
        if (!c.Alibi) _rotary = new Rotary(c.HeadDim, c.RopeTheta, c.RopeScaling, c.MaxPositionEmbeddings);
        var p = $"transformer.h.{index}.";
        Parameter Req(string name) => Ops.Frozen(w[p + name]);
        Parameter? Opt(string name) => w.TryGetValue(p + name, out var t) ? Ops.Frozen(t) : null;
        foreach (var norm in NormNames(c))
        {
            _norms[norm] = (Req(norm + ".weight"), Req(norm + ".bias"));
            register_parameter(norm + "_weight", _norms[norm].Weight);
            register_parameter(norm + "_bias", _norms[norm].Bias);
        }
        query_key_value = Req("self_attention.query_key_value.weight"); query_key_value_bias = Opt("self_attention.query_key_value.bias");
        dense = Req("self_attention.dense.weight"); dense_bias = Opt("self_attention.dense.bias");
        dense_h_to_4h = Req("mlp.dense_h_to_4h.weight"); dense_h_to_4h_bias = Opt("mlp.dense_h_to_4h.bias");
        dense_4h_to_h = Req("mlp.dense_4h_to_h.weight"); dense_4h_to_h_bias = Opt("mlp.dense_4h_to_h.bias");
        RegisterComponents();
    }

    public override (int KvHeads, int HeadDim) CacheShape => (_c.NumKvHeads, _c.HeadDim);

    Tensor Norm(string name, Tensor x) => Ops.LayerNorm(x, _norms[name].Weight, _norms[name].Bias, _c.LayerNormEpsilon);

    public override Tensor Forward(Tensor hidden, StepContext ctx, LayerCache? cache = null)
    {
        if (!_c.ParallelAttn)
        {
            var h = hidden + Attention(Norm("input_layernorm", hidden), ctx, cache);              // [B, T, H]
            return h + Mlp(Norm("post_attention_layernorm", h), ctx);                             // [B, T, H]
        }
        var xa = Norm(_c.TwoInputNorms ? "ln_attn" : "input_layernorm", hidden);                  // [B, T, H]
        var xm = _c.TwoInputNorms ? Norm("ln_mlp", hidden) : xa;                                  // [B, T, H]
        return hidden + (Mlp(xm, ctx) + Attention(xa, ctx, cache));                               // [B, T, H]
    }

    Tensor Mlp(Tensor x, StepContext ctx)
    {
        var up = Linear(ctx, "mlp.dense_h_to_4h", x, dense_h_to_4h, dense_h_to_4h_bias);          // [B, T, F]
        return Linear(ctx, "mlp.dense_4h_to_h", F.gelu(up), dense_4h_to_h, dense_4h_to_h_bias);   // [B, T, H]
    }

    Tensor Attention(Tensor x, StepContext ctx, LayerCache? cache)
    {
        var fused = Linear(ctx, "self_attention.query_key_value", x, query_key_value, query_key_value_bias); // [B, T, (nh+2kvH)*D]
        var (q, k, v) = SplitHeads(fused);                                                       // [B, nh|kvH, T, D]
        if (_rotary is not null)
        {
            var (cos, sin) = _rotary.Tables(ctx, x.dtype);                                       // [B, 1, T, D]
            q = Ops.ApplyRotary(q, cos, sin);
            k = Ops.ApplyRotary(k, cos, sin);
        }
        if (cache is not null) (k, v) = cache.Append(k, v, ctx.PastLength);                     // [B, kvH, S, D]
        // HF's ALiBi path scales (scores + alibi) by 1/√D, so the bias is scaled as well, not only q·k.
        var bias = _c.Alibi ? Alibi.Bias(ctx, _c.NumHeads, x.dtype, bfloat16: true, scale: 1.0 / Math.Sqrt(_c.HeadDim)) : null; // [B, nh, T, S]
        var o = Ops.Attention(q, k, v, ctx, bias);                                               // [B, T, nh*D]
        return Linear(ctx, "self_attention.dense", o, dense, dense_bias);                        // [B, T, H]
    }

    /// <summary>
    /// Splits the fused projection <c>[B, T, (nh+2kvH)·D]</c>. 40B layout: per KV group, its G query heads then
    /// k then v. 7B multi-query: all query heads, then the one k, then the one v. 7B multi-head: per head q, k, v.
    /// Query head h always reads KV head h / G, the grouping <see cref="Ops.Attention"/> assumes.
    /// </summary>
    (Tensor Q, Tensor K, Tensor V) SplitHeads(Tensor fused)
    {
        long b = fused.shape[0], t = fused.shape[1];
        int nh = _c.NumHeads, kvh = _c.NumKvHeads, d = _c.HeadDim;
        Tensor q, k, v;                                                                          // [B, T, heads, D]
        if (_c.NewDecoderArchitecture)
        {
            int g = nh / kvh;
            var qkv = fused.view(b, t, kvh, g + 2, d);                                          // [B, T, kvH, G+2, D]
            q = qkv.narrow(3, 0, g).reshape(b, t, nh, d);
            k = qkv.select(3, g);
            v = qkv.select(3, g + 1);
        }
        else if (_c.MultiQuery)
        {
            var qkv = fused.view(b, t, nh + 2, d);                                              // [B, T, nh+2, D]
            q = qkv.narrow(2, 0, nh);
            k = qkv.narrow(2, nh, 1);
            v = qkv.narrow(2, nh + 1, 1);
        }
        else
        {
            var qkv = fused.view(b, t, nh, 3, d);                                               // [B, T, nh, 3, D]
            (q, k, v) = (qkv.select(3, 0), qkv.select(3, 1), qkv.select(3, 2));
        }
        return (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2));                        // [B, heads, T, D]
    }
}
