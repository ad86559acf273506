using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace PetalsSharp.Models;

// ============================== config ==============================

/// <summary>BLOOM config with the transformers 4.45 defaults for absent keys (<c>n_head</c>/<c>n_layer</c> aliases too).</summary>
public sealed record BloomConfig : ModelConfig
{
    public double LayerNormEpsilon { get; init; } = 1e-5;
    /// <summary>When true, the residual stream carries the normed input instead of the raw one (HF option).</summary>
    public bool ApplyResidualConnectionPostLayernorm { get; init; }

    public override IModelFamily Family => BloomFamily.Instance;
    protected override string Architecture => "BloomForCausalLM";

    public override void Validate(string source)
    {
        base.Validate(source);
        if (NumKvHeads != NumHeads) throw new ConfigException($"{source}: BLOOM has one KV head per query head");
        if (HeadDim * NumHeads != HiddenSize)
            throw new ConfigException($"{source}: hidden_size ({HiddenSize}) must be a multiple of n_head ({NumHeads})");
    }

    protected override JsonObject OwnHfKeys() => new()
    {
        ["n_layer"] = NumLayers, ["n_head"] = NumHeads, ["layer_norm_epsilon"] = LayerNormEpsilon,
        ["apply_residual_connection_post_layernorm"] = ApplyResidualConnectionPostLayernorm,
    };

    internal static BloomConfig Parse(JsonConfigReader r)
    {
        var c = ReadCommon(new BloomConfig
        {
            LayerNormEpsilon = r.Double("layer_norm_epsilon", 1e-5),
            ApplyResidualConnectionPostLayernorm = r.Bool("apply_residual_connection_post_layernorm", false),
        }, r, new("bloom", Vocab: 250880, Hidden: 64, Heads: 8, Layers: 2, MaxPositions: 2048, Tie: true, Bos: 1, Eos: 2, ShortNames: true));
        // ALiBi has no trained position table; this only bounds session length (BLOOM trained on 2048).
        return c with { MaxPositionEmbeddings = r.IntOrNull("seq_length") ?? c.MaxPositionEmbeddings };
    }
}

// ============================== family ==============================

/// <summary>BLOOM: config keys, and the builders of the block and the client-side ends (which name its tensors).</summary>
public sealed class BloomFamily() : ModelFamily(BloomConfig.Parse, "bloom")
{
    public static readonly BloomFamily Instance = new();

    protected override DecoderBlock Block(ModelConfig config, int index, TensorTable t) =>
        new BloomBlock((BloomConfig)config, t.ForBlock(index, $"transformer.h.{index}."));

    /// <summary>As Falcon's, with a LayerNorm right after the embeddings.</summary>
    protected internal override ModelEnds Ends(ModelConfig config, TensorTable t) => ModelEnds.Take(config, t, "transformer.word_embeddings",
        "transformer.ln_f", ((BloomConfig)config).LayerNormEpsilon, rms: false, embeddingNorm: "transformer.word_embeddings_layernorm");

    public override ModelConfig CreateConfig(ModelShape s) => s.IntermediateSize is { } i && i != 4 * s.HiddenSize
        ? throw new ConfigException($"BLOOM's MLP is always 4 × hidden ({4 * s.HiddenSize}), not {i}")
        : ModelConfig.FromShape(new BloomConfig(), "bloom", s);

    /// <summary>About 100M parameters: hidden 768, 12 blocks of 12 heads (7.1M each), vocab 32000 tied.</summary>
    public override ModelConfig BenchmarkConfig() => CreateConfig(new ModelShape(768, 12, 12, null, null, 32000, 2048, TieEmbeddings: true));
}

// ============================== block ==============================

/// <summary>
/// BLOOM block: LayerNorm, multi-head attention with a fused per-head [q, k, v] projection and ALiBi, residual,
/// LayerNorm, tanh-GELU MLP, residual. Keys are cached without any position (ALiBi lives in the scores).
/// </summary>
public sealed class BloomBlock : DecoderBlock
{
    readonly BloomConfig _c;
    readonly Norm input_layernorm, post_attention_layernorm;      // [H] [H]
    readonly BlockLinear query_key_value;                         // [3H, H], rows per head: q (D), k (D), v (D)
    readonly BlockLinear dense, dense_h_to_4h, dense_4h_to_h;     // [H, H] [4H, H] [H, 4H]

    internal BloomBlock(BloomConfig c, TensorTable t) : base($"h.{t.Block}", t.Block)
    {
        _c = c;
        long h = c.HiddenSize;
        // Gain 3 on the non-q/k/v matrices mirrors the reference fixtures' draw, which keeps random BLOOMs lively.
        input_layernorm = t.Norm("input_layernorm", h, c.LayerNormEpsilon, rms: false);
        query_key_value = t.Linear("self_attention.query_key_value", 3 * h, h, bias: true);
        dense = t.Linear("self_attention.dense", h, h, bias: true, gain: 3.0);
        post_attention_layernorm = t.Norm("post_attention_layernorm", h, c.LayerNormEpsilon, rms: false);
        dense_h_to_4h = t.Linear("mlp.dense_h_to_4h", 4 * h, h, bias: true, gain: 3.0);
        dense_4h_to_h = t.Linear("mlp.dense_4h_to_h", h, 4 * h, bias: true, gain: 3.0);
        RegisterComponents();
    }

    public override (int KvHeads, int HeadDim) CacheShape => (_c.NumHeads, _c.HeadDim);

    public override Tensor Forward(Tensor hidden, StepContext ctx, LayerCache? cache = null)
    {
        bool post = _c.ApplyResidualConnectionPostLayernorm;
        var x = input_layernorm.Forward(hidden);                                              // [B, T, H]
        var h = (post ? x : hidden) + Attention(x, ctx, cache);                              // [B, T, H]
        var y = post_attention_layernorm.Forward(h);                                          // [B, T, H]
        var up = dense_h_to_4h.Forward(y, ctx.Adapter);                                       // [B, T, 4H]
        var mlp = dense_4h_to_h.Forward(GeluTanh(up), ctx.Adapter);                           // [B, T, H]
        return (post ? y : h) + mlp;                                                          // [B, T, H]
    }

    Tensor Attention(Tensor x, StepContext ctx, LayerCache? cache)
    {
        long b = x.shape[0], t = x.shape[1];
        int nh = _c.NumHeads, d = _c.HeadDim;
        var qkv = query_key_value.Forward(x, ctx.Adapter).view(b, t, nh, 3, d);              // [B, T, nh, 3, D]
        var q = qkv.select(3, 0).transpose(1, 2);                                              // [B, nh, T, D]
        var k = qkv.select(3, 1).transpose(1, 2);                                              // [B, nh, T, D]
        var v = qkv.select(3, 2).transpose(1, 2);                                              // [B, nh, T, D]
        if (cache is not null) (k, v) = cache.Append(k, v, ctx.PastLength);                   // [B, nh, S, D]
        var bias = Alibi.Bias(ctx, nh, x.dtype);                                               // [B, nh, T, S]
        var o = Ops.Attention(q, k, v, ctx, bias);                                             // [B, T, nh*D]
        return dense.Forward(o, ctx.Adapter);                                                  // [B, T, H]
    }

    Lazy<Kernels.IFusedBlock?>? _fused;

    /// <summary>Built on first use: the weights are viewed in place, so the plan lives as long as the block.</summary>
    public override Kernels.IFusedBlock? TryFuse() => (_fused ??= new(() =>
        FusedBloom.From(_c, input_layernorm, query_key_value, dense, post_attention_layernorm, dense_h_to_4h, dense_4h_to_h))).Value;

    /// <summary>BLOOM's GELU: the tanh approximation with HF's rounded constant √(2/π) ≈ 0.79788456.</summary>
    internal static Tensor GeluTanh(Tensor x) => x * 0.5 * (1.0 + (x * 0.79788456 * (1.0 + 0.044715 * x * x)).tanh());
}
