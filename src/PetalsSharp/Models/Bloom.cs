using System.Text.Json.Nodes;
using TorchSharp;
using TorchSharp.Modules;
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

    public override void Validate(string source)
    {
        base.Validate(source);
        if (NumKvHeads != NumHeads) throw new ConfigException($"{source}: BLOOM has one KV head per query head");
        if (HeadDim * NumHeads != HiddenSize)
            throw new ConfigException($"{source}: hidden_size ({HiddenSize}) must be a multiple of n_head ({NumHeads})");
    }

    public override JsonObject ToHfJson() => new()
    {
        ["architectures"] = new JsonArray("BloomForCausalLM"),
        ["model_type"] = "bloom",
        ["vocab_size"] = VocabSize,
        ["hidden_size"] = HiddenSize,
        ["n_layer"] = NumLayers,
        ["n_head"] = NumHeads,
        ["layer_norm_epsilon"] = LayerNormEpsilon,
        ["apply_residual_connection_post_layernorm"] = ApplyResidualConnectionPostLayernorm,
        ["tie_word_embeddings"] = TieWordEmbeddings,
        ["bos_token_id"] = BosTokenId,
        ["eos_token_id"] = EosTokenIds.FirstOrDefault(),
        ["pad_token_id"] = PadTokenId,
        ["torch_dtype"] = TorchDtype ?? "float32",
    };

    internal static BloomConfig Parse(JsonConfigReader r)
    {
        // HF maps n_embed/n_head/n_layer onto the long names after __init__, so the short ones win when both exist.
        int hidden = r.IntOrNull("n_embed") ?? r.Int("hidden_size", 64);
        int heads = r.IntOrNull("n_head") ?? r.Int("num_attention_heads", 8);
        if (heads <= 0) throw new ConfigException($"{r.Source}: n_head must be positive");
        return new BloomConfig
        {
            ModelType = "bloom",
            VocabSize = r.Int("vocab_size", 250880),
            HiddenSize = hidden,
            NumLayers = r.IntOrNull("n_layer") ?? r.Int("num_hidden_layers", 2),
            NumHeads = heads,
            NumKvHeads = heads,
            HeadDim = hidden / heads,
            LayerNormEpsilon = r.Double("layer_norm_epsilon", 1e-5),
            ApplyResidualConnectionPostLayernorm = r.Bool("apply_residual_connection_post_layernorm", false),
            // ALiBi has no trained position table; this only bounds session length (BLOOM trained on 2048).
            MaxPositionEmbeddings = r.IntOrNull("seq_length") ?? r.Int("max_position_embeddings", 2048),
            TieWordEmbeddings = r.Bool("tie_word_embeddings", true),
            BosTokenId = r.IntOrNull("bos_token_id") ?? 1,
            EosTokenIds = r.Has("eos_token_id") ? r.IntList("eos_token_id") : [2],
            PadTokenId = r.IntOrNull("pad_token_id"),
            TorchDtype = r.String("torch_dtype"),
        };
    }
}

// ============================== family ==============================

/// <summary>BLOOM: checkpoint names and shapes, and builders for the block and the client-side ends.</summary>
public sealed class BloomFamily : IModelFamily, Lora.ILoraTargets
{
    public static readonly BloomFamily Instance = new();

    public IReadOnlyList<string> LoraModules(ModelConfig config) =>
        ["self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"];

    public IReadOnlyList<string> ModelTypes => ["bloom"];

    public ModelConfig ParseConfig(JsonConfigReader reader) => BloomConfig.Parse(reader);

    public IReadOnlyList<TensorSpec> BlockTensors(ModelConfig config, int index)
    {
        long h = config.HiddenSize;
        var p = $"transformer.h.{index}.";
        // Gain 3 on the non-q/k/v matrices mirrors the reference fixtures' draw, which keeps random BLOOMs lively.
        return
        [
            new(p + "input_layernorm.weight", [h], TensorRole.NormScale),
            new(p + "input_layernorm.bias", [h], TensorRole.Bias),
            new(p + "self_attention.query_key_value.weight", [3 * h, h], TensorRole.Matrix),
            new(p + "self_attention.query_key_value.bias", [3 * h], TensorRole.Bias),
            new(p + "self_attention.dense.weight", [h, h], TensorRole.Matrix, Gain: 3.0),
            new(p + "self_attention.dense.bias", [h], TensorRole.Bias),
            new(p + "post_attention_layernorm.weight", [h], TensorRole.NormScale),
            new(p + "post_attention_layernorm.bias", [h], TensorRole.Bias),
            new(p + "mlp.dense_h_to_4h.weight", [4 * h, h], TensorRole.Matrix, Gain: 3.0),
            new(p + "mlp.dense_h_to_4h.bias", [4 * h], TensorRole.Bias),
            new(p + "mlp.dense_4h_to_h.weight", [h, 4 * h], TensorRole.Matrix, Gain: 3.0),
            new(p + "mlp.dense_4h_to_h.bias", [h], TensorRole.Bias),
        ];
    }

    public IReadOnlyList<TensorSpec> EndTensors(ModelConfig config)
    {
        long v = config.VocabSize, h = config.HiddenSize;
        var specs = new List<TensorSpec>
        {
            new("transformer.word_embeddings.weight", [v, h], TensorRole.Embedding),
            new("transformer.word_embeddings_layernorm.weight", [h], TensorRole.NormScale),
            new("transformer.word_embeddings_layernorm.bias", [h], TensorRole.Bias),
            new("transformer.ln_f.weight", [h], TensorRole.NormScale),
            new("transformer.ln_f.bias", [h], TensorRole.Bias),
        };
        if (!config.TieWordEmbeddings) specs.Add(new("lm_head.weight", [v, h], TensorRole.Matrix));
        return specs;
    }

    public DecoderBlock CreateBlock(ModelConfig config, int index, IReadOnlyDictionary<string, Tensor> weights) =>
        new BloomBlock((BloomConfig)config, index, weights);

    public ModelEnds CreateEnds(ModelConfig config, IReadOnlyDictionary<string, Tensor> w)
    {
        var c = (BloomConfig)config;
        var embed = w["transformer.word_embeddings.weight"];
        var embedNorm = new Norm(w["transformer.word_embeddings_layernorm.weight"], w["transformer.word_embeddings_layernorm.bias"],
            c.LayerNormEpsilon, rms: false);
        var final = new Norm(w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], c.LayerNormEpsilon, rms: false);
        return new ModelEnds(config, embed, embedNorm, final, c.TieWordEmbeddings ? embed : w["lm_head.weight"]);
    }

    public ModelConfig CreateConfig(ModelShape s) => s.IntermediateSize is { } i && i != 4 * s.HiddenSize
        ? throw new ConfigException($"BLOOM's MLP is always 4 × hidden ({4 * s.HiddenSize}), not {i}")
        : new BloomConfig
    {
        ModelType = "bloom", VocabSize = s.VocabSize, HiddenSize = s.HiddenSize, NumLayers = s.NumLayers,
        NumHeads = s.NumHeads, NumKvHeads = s.NumKvHeads ?? s.NumHeads, HeadDim = s.HiddenSize / s.NumHeads,
        MaxPositionEmbeddings = s.MaxPositions, TieWordEmbeddings = s.TieEmbeddings,
        BosTokenId = s.VocabSize - 1, EosTokenIds = [s.VocabSize - 1],
    };

    /// <summary>About 100M parameters: hidden 768, 12 blocks of 12 heads (7.1M each), vocab 32000 tied.</summary>
    public ModelConfig BenchmarkConfig() => CreateConfig(new ModelShape(768, 12, 12, null, null, 32000, 2048, TieEmbeddings: true));
}

// ============================== block ==============================

/// <summary>
/// BLOOM block: LayerNorm, multi-head attention with a fused per-head [q, k, v] projection and ALiBi, residual,
/// LayerNorm, tanh-GELU MLP, residual. Keys are cached without any position (ALiBi lives in the scores).
/// </summary>
public sealed class BloomBlock : DecoderBlock
{
    readonly BloomConfig _c;
    readonly Parameter input_layernorm, input_layernorm_bias, post_attention_layernorm, post_attention_layernorm_bias; // [H]
    readonly Parameter query_key_value, query_key_value_bias;    // [3H, H] [3H], rows per head: q (D), k (D), v (D)
    readonly Parameter dense, dense_bias;                        // [H, H] [H]
    readonly Parameter dense_h_to_4h, dense_h_to_4h_bias;        // [4H, H] [4H]
    readonly Parameter dense_4h_to_h, dense_4h_to_h_bias;        // [H, 4H] [H]

    public BloomBlock(BloomConfig c, int index, IReadOnlyDictionary<string, Tensor> w) : base($"h.{index}", index)
    {
        _c = c;
        var p = $"transformer.h.{index}.";
        Parameter Req(string name) => Ops.Frozen(w[p + name]);
        input_layernorm = Req("input_layernorm.weight"); input_layernorm_bias = Req("input_layernorm.bias");
        post_attention_layernorm = Req("post_attention_layernorm.weight"); post_attention_layernorm_bias = Req("post_attention_layernorm.bias");
        query_key_value = Req("self_attention.query_key_value.weight"); query_key_value_bias = Req("self_attention.query_key_value.bias");
        dense = Req("self_attention.dense.weight"); dense_bias = Req("self_attention.dense.bias");
        dense_h_to_4h = Req("mlp.dense_h_to_4h.weight"); dense_h_to_4h_bias = Req("mlp.dense_h_to_4h.bias");
        dense_4h_to_h = Req("mlp.dense_4h_to_h.weight"); dense_4h_to_h_bias = Req("mlp.dense_4h_to_h.bias");
        RegisterComponents();
    }

    public override (int KvHeads, int HeadDim) CacheShape => (_c.NumHeads, _c.HeadDim);

    public override Tensor Forward(Tensor hidden, StepContext ctx, LayerCache? cache = null)
    {
        double eps = _c.LayerNormEpsilon;
        bool post = _c.ApplyResidualConnectionPostLayernorm;
        var x = Ops.LayerNorm(hidden, input_layernorm, input_layernorm_bias, eps);            // [B, T, H]
        var h = (post ? x : hidden) + Attention(x, ctx, cache);                              // [B, T, H]
        var y = Ops.LayerNorm(h, post_attention_layernorm, post_attention_layernorm_bias, eps); // [B, T, H]
        var up = Linear(ctx, "mlp.dense_h_to_4h", y, dense_h_to_4h, dense_h_to_4h_bias);        // [B, T, 4H]
        var mlp = Linear(ctx, "mlp.dense_4h_to_h", GeluTanh(up), dense_4h_to_h, dense_4h_to_h_bias); // [B, T, H]
        return (post ? y : h) + mlp;                                                          // [B, T, H]
    }

    Tensor Attention(Tensor x, StepContext ctx, LayerCache? cache)
    {
        long b = x.shape[0], t = x.shape[1];
        int nh = _c.NumHeads, d = _c.HeadDim;
        var qkv = Linear(ctx, "self_attention.query_key_value", x, query_key_value, query_key_value_bias)
            .view(b, t, nh, 3, d);                                                             // [B, T, nh, 3, D]
        var q = qkv.select(3, 0).transpose(1, 2);                                              // [B, nh, T, D]
        var k = qkv.select(3, 1).transpose(1, 2);                                              // [B, nh, T, D]
        var v = qkv.select(3, 2).transpose(1, 2);                                              // [B, nh, T, D]
        if (cache is not null) (k, v) = cache.Append(k, v, ctx.PastLength);                   // [B, nh, S, D]
        var bias = Alibi.Bias(ctx, nh, x.dtype);                                               // [B, nh, T, S]
        var o = Ops.Attention(q, k, v, ctx, bias);                                             // [B, T, nh*D]
        return Linear(ctx, "self_attention.dense", o, dense, dense_bias);                      // [B, T, H]
    }

    /// <summary>BLOOM's GELU: the tanh approximation with HF's rounded constant √(2/π) ≈ 0.79788456.</summary>
    internal static Tensor GeluTanh(Tensor x) => x * 0.5 * (1.0 + (x * 0.79788456 * (1.0 + 0.044715 * x * x)).tanh());
}
