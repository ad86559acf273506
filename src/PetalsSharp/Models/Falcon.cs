using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PetalsSharp.Models;

// ============================== config ==============================

/// <summary>
/// Falcon config with the transformers 4.45 defaults for absent keys. Two layouts share it: the 7B style
/// (<c>new_decoder_architecture</c> false: one fused q/k/v of all heads or multi-query, one or two norms) and
/// the 40B/180B style (true: grouped KV heads, <c>ln_attn</c>/<c>ln_mlp</c>, attention and MLP in parallel).
/// Legacy remote-code configs (<c>RefinedWebModel</c> = 7B style, <c>RefinedWeb</c> = 40B style) read the same way.
/// </summary>
public sealed record FalconConfig : ModelConfig
{
    public required int FfnHiddenSize { get; init; }
    public double LayerNormEpsilon { get; init; } = 1e-5;
    public bool NewDecoderArchitecture { get; init; }
    public bool MultiQuery { get; init; } = true;
    public bool ParallelAttn { get; init; } = true;
    /// <summary>Norms in front of a parallel block: 2 (<c>ln_attn</c>, <c>ln_mlp</c>) or 1 (<c>input_layernorm</c>).</summary>
    public int NumLnInParallelAttn { get; init; } = 1;
    /// <summary>Biases on every linear layer (not on the norms, which always have one).</summary>
    public bool Bias { get; init; }
    /// <summary>ALiBi instead of rotary.</summary>
    public bool Alibi { get; init; }
    public double RopeTheta { get; init; } = 10000.0;
    public RopeScaling? RopeScaling { get; init; }
    public string Activation { get; init; } = "gelu";

    public override IModelFamily Family => FalconFamily.Instance;
    protected override string Architecture => "FalconForCausalLM";

    /// <summary>True when the block has <c>ln_attn</c> and <c>ln_mlp</c> rather than <c>input_layernorm</c>.</summary>
    public bool TwoInputNorms => NewDecoderArchitecture && NumLnInParallelAttn == 2;

    /// <summary>Output rows of the fused <c>query_key_value</c> projection.</summary>
    public int FusedQkvSize => (NumHeads + 2 * NumKvHeads) * HeadDim;

    public override void Validate(string source)
    {
        base.Validate(source);
        void Require(bool ok, string what)
        {
            if (!ok) throw new ConfigException($"{source}: {what}");
        }
        Require(HeadDim * NumHeads == HiddenSize, $"hidden_size ({HiddenSize}) must be a multiple of num_attention_heads ({NumHeads})");
        Require(FfnHiddenSize > 0, "ffn_hidden_size must be positive");
        Require(Alibi || HeadDim % 2 == 0, $"head_dim must be even for rotary (got {HeadDim})");
        Require(Activation == "gelu", $"activation '{Activation}' is not supported (only gelu)");
        Require(RopeScaling is null or { Type: "linear" or "dynamic" }, $"Falcon supports rope_scaling linear or dynamic (got {RopeScaling?.Type})");
        Require(NumLnInParallelAttn is 1 or 2, $"num_ln_in_parallel_attn must be 1 or 2 (got {NumLnInParallelAttn})");
        // transformers itself cannot run these combinations (it builds one set of norms and reads another).
        Require(!NewDecoderArchitecture || ParallelAttn, "new_decoder_architecture requires parallel_attn");
        Require(NewDecoderArchitecture || NumLnInParallelAttn == 1, "num_ln_in_parallel_attn 2 needs new_decoder_architecture");
        Require(NewDecoderArchitecture || NumKvHeads == 1 || NumKvHeads == NumHeads,
            "the 7B-style layout has one KV head (multi_query) or one per query head");
    }

    protected override JsonObject OwnHfKeys() => new()
    {
        ["ffn_hidden_size"] = FfnHiddenSize, ["num_hidden_layers"] = NumLayers, ["num_attention_heads"] = NumHeads,
        ["num_kv_heads"] = NumKvHeads, ["new_decoder_architecture"] = NewDecoderArchitecture, ["multi_query"] = MultiQuery,
        ["parallel_attn"] = ParallelAttn, ["num_ln_in_parallel_attn"] = NewDecoderArchitecture ? NumLnInParallelAttn : null,
        ["bias"] = Bias, ["alibi"] = Alibi, ["activation"] = Activation, ["layer_norm_epsilon"] = LayerNormEpsilon,
        ["rope_theta"] = RopeTheta, ["rope_scaling"] = RopeScaling?.ToLegacyJson(), ["max_position_embeddings"] = MaxPositionEmbeddings,
    };

    internal static FalconConfig Parse(JsonConfigReader r)
    {
        bool newArch = r.Bool("new_decoder_architecture", r.String("model_type") == "RefinedWeb"), multiQuery = r.Bool("multi_query", true);
        var c = ReadCommon(new FalconConfig
        {
            FfnHiddenSize = 0,   // set below, once the hidden size is known
            NewDecoderArchitecture = newArch, MultiQuery = multiQuery, ParallelAttn = r.Bool("parallel_attn", true),
            NumLnInParallelAttn = r.IntOrNull("num_ln_in_parallel_attn") ?? (newArch ? 2 : 1),
            Bias = r.Bool("bias", false), Alibi = r.Bool("alibi", false), Activation = r.String("activation") ?? "gelu",
            LayerNormEpsilon = r.Double("layer_norm_epsilon", 1e-5),
            RopeTheta = r.Double("rope_theta", 10000.0), RopeScaling = RopeScaling.Parse(r),
        }, r, new("falcon", Vocab: 65024, Hidden: 4544, Heads: 71, Layers: 32, MaxPositions: 2048, Tie: true, Bos: 11, Eos: 11, ShortNames: true));
        return c with
        {
            FfnHiddenSize = r.IntOrNull("ffn_hidden_size") ?? 4 * c.HiddenSize,
            NumKvHeads = newArch ? r.IntOrNull("num_kv_heads") ?? r.IntOrNull("n_head_kv") ?? c.NumHeads : multiQuery ? 1 : c.NumHeads,
        };
    }
}

// ============================== family ==============================

/// <summary>Falcon (both layouts): config keys, and the builders of the block and the client-side ends (which name its tensors).</summary>
public sealed class FalconFamily() : ModelFamily(FalconConfig.Parse, "falcon", "RefinedWeb", "RefinedWebModel")
{
    public static readonly FalconFamily Instance = new();

    protected override DecoderBlock Block(ModelConfig config, int index, TensorTable t) =>
        new FalconBlock((FalconConfig)config, t.ForBlock(index, $"transformer.h.{index}."));

    protected internal override ModelEnds Ends(ModelConfig config, TensorTable t) =>
        ModelEnds.Take(config, t, "transformer.word_embeddings", "transformer.ln_f", ((FalconConfig)config).LayerNormEpsilon, rms: false);

    /// <summary>The 40B/180B layout (grouped KV heads, two norms, parallel attention and MLP), rotary, no biases.</summary>
    public override ModelConfig CreateConfig(ModelShape s) => ModelConfig.FromShape(new FalconConfig
    {
        FfnHiddenSize = s.IntermediateSize ?? 4 * s.HiddenSize, NewDecoderArchitecture = true, NumLnInParallelAttn = 2,
    }, "falcon", s);

    /// <summary>About 100M parameters: hidden 768, 12 blocks of 12 query / 4 KV heads (6.3M each), vocab 32000 tied.</summary>
    public override ModelConfig BenchmarkConfig() => CreateConfig(new ModelShape(768, 12, 12, 4, null, 32000, 2048, TieEmbeddings: true));
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
    readonly Dictionary<string, Norm> _norms = new();                                 // [H] each
    readonly BlockLinear query_key_value, dense, dense_h_to_4h, dense_4h_to_h;       // [(nh+2kvH)*D, H] [H, H] [F, H] [H, F]

    internal FalconBlock(FalconConfig c, TensorTable t) : base($"h.{t.Block}", t.Block)
    {
        _c = c;
        if (!c.Alibi) _rotary = new Rotary(c.HeadDim, c.RopeTheta, c.RopeScaling, c.MaxPositionEmbeddings);
        long h = c.HiddenSize, f = c.FfnHiddenSize;
        // The layout decides which norms exist: ln_attn and ln_mlp (40B), or input_layernorm (7B), plus
        // post_attention_layernorm when attention and MLP run one after the other.
        string[] norms = c.TwoInputNorms ? ["ln_attn", "ln_mlp"] : c.ParallelAttn ? ["input_layernorm"] : ["input_layernorm", "post_attention_layernorm"];
        foreach (var name in norms) register_module(name, _norms[name] = t.Norm(name, h, c.LayerNormEpsilon, rms: false));
        query_key_value = t.Linear("self_attention.query_key_value", c.FusedQkvSize, h, c.Bias);
        dense = t.Linear("self_attention.dense", h, h, c.Bias);
        dense_h_to_4h = t.Linear("mlp.dense_h_to_4h", f, h, c.Bias);
        dense_4h_to_h = t.Linear("mlp.dense_4h_to_h", h, f, c.Bias);
        RegisterComponents();
    }

    public override (int KvHeads, int HeadDim) CacheShape => (_c.NumKvHeads, _c.HeadDim);

    Tensor Norm(string name, Tensor x) => _norms[name].Forward(x);                                 // [B, T, H]

    Lazy<Kernels.IFusedBlock?>? _fused;

    /// <summary>Built on first use: the weights are viewed in place, so the plan lives as long as the block.</summary>
    public override Kernels.IFusedBlock? TryFuse() => (_fused ??= new(() =>
    {
        var attnNorm = _norms[_c.TwoInputNorms ? "ln_attn" : "input_layernorm"];
        var mlpNorm = _c.TwoInputNorms ? _norms["ln_mlp"] : _c.ParallelAttn ? null : _norms["post_attention_layernorm"];
        return FusedFalcon.From(_c, attnNorm, mlpNorm, _rotary, query_key_value, dense, dense_h_to_4h, dense_4h_to_h);
    })).Value;

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
        var up = dense_h_to_4h.Forward(x, ctx.Adapter);                                          // [B, T, F]
        return dense_4h_to_h.Forward(F.gelu(up), ctx.Adapter);                                   // [B, T, H]
    }

    Tensor Attention(Tensor x, StepContext ctx, LayerCache? cache)
    {
        var fused = query_key_value.Forward(x, ctx.Adapter);                                     // [B, T, (nh+2kvH)*D]
        var (q, k, v) = SplitHeads(fused);                                                       // [B, nh|kvH, T, D]
        if (_rotary is not null)
        {
            var (cos, sin) = _rotary.Tables(ctx, x.dtype);                                       // [B, 1, T, D]
            q = Ops.ApplyRotary(q, cos, sin);                                                    // [B, nh, T, D]
            k = Ops.ApplyRotary(k, cos, sin);                                                    // [B, kvH, T, D]
        }
        if (cache is not null) (k, v) = cache.Append(k, v, ctx.PastLength);                     // [B, kvH, S, D]
        // HF's ALiBi path scales (scores + alibi) by 1/√D, so the bias is scaled as well, not only q·k.
        var bias = _c.Alibi ? Alibi.Bias(ctx, _c.NumHeads, x.dtype, bfloat16: true, scale: 1.0 / Math.Sqrt(_c.HeadDim)) : null; // [B, nh, T, S]
        var o = Ops.Attention(q, k, v, ctx, bias);                                               // [B, T, nh*D]
        return dense.Forward(o, ctx.Adapter);                                                    // [B, T, H]
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
