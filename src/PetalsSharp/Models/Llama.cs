using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PetalsSharp.Models;

// ============================== config ==============================

/// <summary>Llama 2/3/3.1 config with the transformers 4.45 defaults for absent keys.</summary>
public sealed record LlamaConfig : ModelConfig
{
    public required int IntermediateSize { get; init; }
    public double RmsNormEps { get; init; } = 1e-6;
    public double RopeTheta { get; init; } = 10000.0;
    public RopeScaling? RopeScaling { get; init; }
    public bool AttentionBias { get; init; }
    public bool MlpBias { get; init; }
    public string HiddenAct { get; init; } = "silu";

    public override IModelFamily Family => LlamaFamily.Instance;

    public override void Validate(string source)
    {
        base.Validate(source);
        if (IntermediateSize <= 0) throw new ConfigException($"{source}: intermediate_size must be positive");
        if (HeadDim % 2 != 0) throw new ConfigException($"{source}: head_dim must be even for rotary (got {HeadDim})");
        if (HiddenAct != "silu") throw new ConfigException($"{source}: hidden_act '{HiddenAct}' is not supported (only silu)");
    }

    public override System.Text.Json.Nodes.JsonObject ToHfJson() => new()
    {
        ["architectures"] = new System.Text.Json.Nodes.JsonArray("LlamaForCausalLM"),
        ["model_type"] = "llama",
        ["vocab_size"] = VocabSize,
        ["hidden_size"] = HiddenSize,
        ["intermediate_size"] = IntermediateSize,
        ["num_hidden_layers"] = NumLayers,
        ["num_attention_heads"] = NumHeads,
        ["num_key_value_heads"] = NumKvHeads,
        ["head_dim"] = HeadDim,
        ["hidden_act"] = HiddenAct,
        ["rms_norm_eps"] = RmsNormEps,
        ["rope_theta"] = RopeTheta,
        ["rope_scaling"] = RopeScaling is null ? null : new System.Text.Json.Nodes.JsonObject
        {
            ["rope_type"] = RopeScaling.Type, ["factor"] = RopeScaling.Factor,
            ["low_freq_factor"] = RopeScaling.LowFreqFactor, ["high_freq_factor"] = RopeScaling.HighFreqFactor,
            ["original_max_position_embeddings"] = RopeScaling.OriginalMaxPositionEmbeddings,
        },
        ["max_position_embeddings"] = MaxPositionEmbeddings,
        ["tie_word_embeddings"] = TieWordEmbeddings,
        ["attention_bias"] = AttentionBias,
        ["mlp_bias"] = MlpBias,
        ["bos_token_id"] = BosTokenId,
        ["eos_token_id"] = EosTokenIds.Count == 1 ? EosTokenIds[0] : new System.Text.Json.Nodes.JsonArray(EosTokenIds.Select(e => (System.Text.Json.Nodes.JsonNode?)e).ToArray()),
        ["pad_token_id"] = PadTokenId,
        ["torch_dtype"] = TorchDtype ?? "float32",
    };

    internal static LlamaConfig Parse(JsonConfigReader r)
    {
        int hidden = r.Int("hidden_size", 4096), heads = r.Int("num_attention_heads", 32);
        if (heads <= 0) throw new ConfigException($"{r.Source}: num_attention_heads must be positive");
        return new LlamaConfig
        {
            ModelType = "llama",
            VocabSize = r.Int("vocab_size", 32000),
            HiddenSize = hidden,
            IntermediateSize = r.Int("intermediate_size", 11008),
            NumLayers = r.Int("num_hidden_layers", 32),
            NumHeads = heads,
            NumKvHeads = r.Int("num_key_value_heads", heads),
            HeadDim = r.Int("head_dim", hidden / heads),
            RmsNormEps = r.Double("rms_norm_eps", 1e-6),
            RopeTheta = r.Double("rope_theta", 10000.0),
            RopeScaling = RopeScaling.Parse(r),
            MaxPositionEmbeddings = r.Int("max_position_embeddings", 2048),
            TieWordEmbeddings = r.Bool("tie_word_embeddings", false),
            AttentionBias = r.Bool("attention_bias", false),
            MlpBias = r.Bool("mlp_bias", false),
            HiddenAct = r.String("hidden_act") ?? "silu",
            BosTokenId = r.IntOrNull("bos_token_id") ?? 1,
            EosTokenIds = r.Has("eos_token_id") ? r.IntList("eos_token_id") : [2],
            PadTokenId = r.IntOrNull("pad_token_id"),
            TorchDtype = r.String("torch_dtype"),
        };
    }
}

// ============================== family ==============================

/// <summary>Llama: checkpoint names and shapes, and builders for the block and the client-side ends.</summary>
public sealed class LlamaFamily : IModelFamily, Lora.ILoraTargets
{
    public static readonly LlamaFamily Instance = new();

    public IReadOnlyList<string> LoraModules(ModelConfig config) =>
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"];

    public IReadOnlyList<string> ModelTypes => ["llama"];

    public ModelConfig ParseConfig(JsonConfigReader reader) => LlamaConfig.Parse(reader);

    public IReadOnlyList<TensorSpec> BlockTensors(ModelConfig config, int index)
    {
        var c = (LlamaConfig)config;
        long h = c.HiddenSize, q = c.NumHeads * c.HeadDim, kv = c.NumKvHeads * c.HeadDim, i = c.IntermediateSize;
        var p = $"model.layers.{index}.";
        var specs = new List<TensorSpec>
        {
            new(p + "input_layernorm.weight", [h], TensorRole.NormScale),
            new(p + "self_attn.q_proj.weight", [q, h], TensorRole.Matrix),
            new(p + "self_attn.k_proj.weight", [kv, h], TensorRole.Matrix),
            new(p + "self_attn.v_proj.weight", [kv, h], TensorRole.Matrix),
            new(p + "self_attn.o_proj.weight", [h, q], TensorRole.Matrix),
            new(p + "post_attention_layernorm.weight", [h], TensorRole.NormScale),
            new(p + "mlp.gate_proj.weight", [i, h], TensorRole.Matrix),
            new(p + "mlp.up_proj.weight", [i, h], TensorRole.Matrix),
            new(p + "mlp.down_proj.weight", [h, i], TensorRole.Matrix),
        };
        if (c.AttentionBias)
            specs.AddRange([
                new(p + "self_attn.q_proj.bias", [q], TensorRole.Bias), new(p + "self_attn.k_proj.bias", [kv], TensorRole.Bias),
                new(p + "self_attn.v_proj.bias", [kv], TensorRole.Bias), new(p + "self_attn.o_proj.bias", [h], TensorRole.Bias)]);
        if (c.MlpBias)
            specs.AddRange([
                new(p + "mlp.gate_proj.bias", [i], TensorRole.Bias), new(p + "mlp.up_proj.bias", [i], TensorRole.Bias),
                new(p + "mlp.down_proj.bias", [h], TensorRole.Bias)]);
        return specs;
    }

    public IReadOnlyList<TensorSpec> EndTensors(ModelConfig config)
    {
        long v = config.VocabSize, h = config.HiddenSize;
        var specs = new List<TensorSpec>
        {
            new("model.embed_tokens.weight", [v, h], TensorRole.Embedding),
            new("model.norm.weight", [h], TensorRole.NormScale),
        };
        if (!config.TieWordEmbeddings) specs.Add(new("lm_head.weight", [v, h], TensorRole.Matrix));
        return specs;
    }

    public DecoderBlock CreateBlock(ModelConfig config, int index, IReadOnlyDictionary<string, Tensor> weights) =>
        new LlamaBlock((LlamaConfig)config, index, weights);

    public ModelEnds CreateEnds(ModelConfig config, IReadOnlyDictionary<string, Tensor> w)
    {
        var c = (LlamaConfig)config;
        var embed = w["model.embed_tokens.weight"];
        return new ModelEnds(config, embed, null, new Norm(w["model.norm.weight"], null, c.RmsNormEps, rms: true),
            c.TieWordEmbeddings ? embed : w["lm_head.weight"]);
    }

    public ModelConfig CreateConfig(ModelShape s) => new LlamaConfig
    {
        ModelType = "llama", VocabSize = s.VocabSize, HiddenSize = s.HiddenSize, NumLayers = s.NumLayers,
        NumHeads = s.NumHeads, NumKvHeads = s.NumKvHeads ?? s.NumHeads, HeadDim = s.HiddenSize / s.NumHeads,
        IntermediateSize = s.IntermediateSize ?? (8 * s.HiddenSize / 3 + 63) / 64 * 64,
        MaxPositionEmbeddings = s.MaxPositions, TieWordEmbeddings = s.TieEmbeddings, RmsNormEps = 1e-5,
        BosTokenId = s.VocabSize - 1, EosTokenIds = [s.VocabSize - 1],
    };

    /// <summary>The ~100M model of the issue: hidden 768, 12 layers, 12 heads, 4 KV heads, MLP 2048, vocab 32000.</summary>
    public ModelConfig BenchmarkConfig() => CreateConfig(new ModelShape(768, 12, 12, 4, 2048, 32000, 2048, TieEmbeddings: false));
}

// ============================== block ==============================

/// <summary>
/// Llama decoder block: pre-RMSNorm, grouped-query attention with rotary (and scaling), residual,
/// pre-RMSNorm, SwiGLU MLP, residual. The same block serves Llama 2, 3 and 3.1.
/// </summary>
public sealed class LlamaBlock : DecoderBlock
{
    readonly LlamaConfig _c;
    readonly Rotary _rotary;
    readonly Parameter input_layernorm, post_attention_layernorm;          // [H]
    readonly Parameter q_proj, k_proj, v_proj, o_proj;                     // [H*D, H] [kvH*D, H] [kvH*D, H] [H, H*D]
    readonly Parameter gate_proj, up_proj, down_proj;                      // [I, H] [I, H] [H, I]
    readonly Parameter? q_bias, k_bias, v_bias, o_bias, gate_bias, up_bias, down_bias;

    public LlamaBlock(LlamaConfig c, int index, IReadOnlyDictionary<string, Tensor> w) : base($"layers.{index}", index)
    {
        _c = c;
        _rotary = new Rotary(c.HeadDim, c.RopeTheta, c.RopeScaling, c.MaxPositionEmbeddings);
        var p = $"model.layers.{index}.";
        Parameter Req(string name) => Ops.Frozen(w[p + name]);
        Parameter? Opt(string name) => w.TryGetValue(p + name, out var t) ? Ops.Frozen(t) : null;
        input_layernorm = Req("input_layernorm.weight");
        post_attention_layernorm = Req("post_attention_layernorm.weight");
        q_proj = Req("self_attn.q_proj.weight"); k_proj = Req("self_attn.k_proj.weight");
        v_proj = Req("self_attn.v_proj.weight"); o_proj = Req("self_attn.o_proj.weight");
        gate_proj = Req("mlp.gate_proj.weight"); up_proj = Req("mlp.up_proj.weight"); down_proj = Req("mlp.down_proj.weight");
        q_bias = Opt("self_attn.q_proj.bias"); k_bias = Opt("self_attn.k_proj.bias");
        v_bias = Opt("self_attn.v_proj.bias"); o_bias = Opt("self_attn.o_proj.bias");
        gate_bias = Opt("mlp.gate_proj.bias"); up_bias = Opt("mlp.up_proj.bias"); down_bias = Opt("mlp.down_proj.bias");
        RegisterComponents();
    }

    public override (int KvHeads, int HeadDim) CacheShape => (_c.NumKvHeads, _c.HeadDim);

    public override Tensor Forward(Tensor hidden, StepContext ctx, LayerCache? cache = null)
    {
        var x = Ops.RmsNorm(hidden, input_layernorm, _c.RmsNormEps);                 // [B, T, H]
        var attention = SharedLayers.RotarySelfAttention(x, ctx, cache, _rotary,
            new AttentionWeights(q_proj, k_proj, v_proj, o_proj, q_bias, k_bias, v_bias, o_bias), _c.NumHeads, _c.NumKvHeads,
            linear: AdapterLinear(ctx));
        var h = hidden + attention;                                                   // [B, T, H]
        var y = Ops.RmsNorm(h, post_attention_layernorm, _c.RmsNormEps);             // [B, T, H]
        var mlp = SharedLayers.SwiGlu(y, gate_proj, up_proj, down_proj, gate_bias, up_bias, down_bias, AdapterLinear(ctx)); // [B, T, H]
        return h + mlp;                                                               // [B, T, H]
    }
}
