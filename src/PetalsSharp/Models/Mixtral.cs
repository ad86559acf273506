using System.Text.Json.Nodes;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PetalsSharp.Models;

// ============================== config ==============================

/// <summary>Mixtral config with the transformers 4.45 defaults (Mixtral 8x7B) for absent keys.</summary>
public sealed record MixtralConfig : ModelConfig
{
    /// <summary>Width of each expert's SwiGLU MLP.</summary>
    public required int IntermediateSize { get; init; }
    public int NumLocalExperts { get; init; } = 8;
    public int NumExpertsPerTok { get; init; } = 2;
    /// <summary>Each query sees at most its last this-many keys (itself included); null = full causal attention.</summary>
    public int? SlidingWindow { get; init; }
    public double RmsNormEps { get; init; } = 1e-5;
    public double RopeTheta { get; init; } = 1e6;
    public RopeScaling? RopeScaling { get; init; }
    public string HiddenAct { get; init; } = "silu";

    public override IModelFamily Family => MixtralFamily.Instance;

    public override void Validate(string source)
    {
        base.Validate(source);
        void Require(bool ok, string what)
        {
            if (!ok) throw new ConfigException($"{source}: {what}");
        }
        Require(IntermediateSize > 0, "intermediate_size must be positive");
        Require(HeadDim % 2 == 0, $"head_dim must be even for rotary (got {HeadDim})");
        Require(HiddenAct == "silu", $"hidden_act '{HiddenAct}' is not supported (only silu)");
        Require(NumLocalExperts > 0, $"num_local_experts must be positive (got {NumLocalExperts})");
        Require(NumExpertsPerTok > 0 && NumExpertsPerTok <= NumLocalExperts,
            $"num_experts_per_tok must be in [1, num_local_experts = {NumLocalExperts}] (got {NumExpertsPerTok})");
        Require(SlidingWindow is null or > 0, $"sliding_window must be positive or null (got {SlidingWindow})");
    }

    public override JsonObject ToHfJson() => new()
    {
        ["architectures"] = new JsonArray("MixtralForCausalLM"),
        ["model_type"] = "mixtral",
        ["vocab_size"] = VocabSize,
        ["hidden_size"] = HiddenSize,
        ["intermediate_size"] = IntermediateSize,
        ["num_hidden_layers"] = NumLayers,
        ["num_attention_heads"] = NumHeads,
        ["num_key_value_heads"] = NumKvHeads,
        ["head_dim"] = HeadDim,
        ["num_local_experts"] = NumLocalExperts,
        ["num_experts_per_tok"] = NumExpertsPerTok,
        ["sliding_window"] = SlidingWindow,
        ["hidden_act"] = HiddenAct,
        ["rms_norm_eps"] = RmsNormEps,
        ["rope_theta"] = RopeTheta,
        ["rope_scaling"] = RopeScaling is null ? null : new JsonObject
        {
            ["rope_type"] = RopeScaling.Type, ["factor"] = RopeScaling.Factor,
            ["low_freq_factor"] = RopeScaling.LowFreqFactor, ["high_freq_factor"] = RopeScaling.HighFreqFactor,
            ["original_max_position_embeddings"] = RopeScaling.OriginalMaxPositionEmbeddings,
        },
        ["max_position_embeddings"] = MaxPositionEmbeddings,
        ["tie_word_embeddings"] = TieWordEmbeddings,
        ["bos_token_id"] = BosTokenId,
        ["eos_token_id"] = EosTokenIds.Count == 1 ? EosTokenIds[0] : new JsonArray(EosTokenIds.Select(e => (JsonNode?)e).ToArray()),
        ["pad_token_id"] = PadTokenId,
        ["torch_dtype"] = TorchDtype ?? "float32",
    };

    internal static MixtralConfig Parse(JsonConfigReader r)
    {
        int hidden = r.Int("hidden_size", 4096), heads = r.Int("num_attention_heads", 32);
        if (heads <= 0) throw new ConfigException($"{r.Source}: num_attention_heads must be positive");
        return new MixtralConfig
        {
            ModelType = "mixtral",
            VocabSize = r.Int("vocab_size", 32000),
            HiddenSize = hidden,
            IntermediateSize = r.Int("intermediate_size", 14336),
            NumLayers = r.Int("num_hidden_layers", 32),
            NumHeads = heads,
            NumKvHeads = r.Int("num_key_value_heads", 8),
            // transformers 4.45 always derives it; later versions read head_dim when present.
            HeadDim = r.Int("head_dim", hidden / heads),
            NumLocalExperts = r.Int("num_local_experts", 8),
            NumExpertsPerTok = r.Int("num_experts_per_tok", 2),
            SlidingWindow = r.IntOrNull("sliding_window"),
            RmsNormEps = r.Double("rms_norm_eps", 1e-5),
            RopeTheta = r.Double("rope_theta", 1e6),
            RopeScaling = RopeScaling.Parse(r),
            MaxPositionEmbeddings = r.Int("max_position_embeddings", 4096 * 32),
            TieWordEmbeddings = r.Bool("tie_word_embeddings", false),
            HiddenAct = r.String("hidden_act") ?? "silu",
            BosTokenId = r.IntOrNull("bos_token_id") ?? 1,
            EosTokenIds = r.Has("eos_token_id") ? r.IntList("eos_token_id") : [2],
            PadTokenId = r.IntOrNull("pad_token_id"),
            TorchDtype = r.String("torch_dtype"),
        };
    }
}

// ============================== family ==============================

/// <summary>Mixtral: Llama's attention and ends, with a sparse mixture of SwiGLU experts in place of the MLP.</summary>
public sealed class MixtralFamily : IModelFamily, Lora.ILoraTargets
{
    public static readonly MixtralFamily Instance = new();

    /// <summary>Attention, the router, and every expert's w1/w2/w3 (PEFT's names; "w1" selects it in all experts).</summary>
    public IReadOnlyList<string> LoraModules(ModelConfig config) =>
    [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "block_sparse_moe.gate",
        .. Enumerable.Range(0, ((MixtralConfig)config).NumLocalExperts)
            .SelectMany(e => new[] { "w1", "w2", "w3" }.Select(w => $"block_sparse_moe.experts.{e}.{w}")),
    ];

    public IReadOnlyList<string> ModelTypes => ["mixtral"];

    public ModelConfig ParseConfig(JsonConfigReader reader) => MixtralConfig.Parse(reader);

    public IReadOnlyList<TensorSpec> BlockTensors(ModelConfig config, int index)
    {
        var c = (MixtralConfig)config;
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
            new(p + "block_sparse_moe.gate.weight", [c.NumLocalExperts, h], TensorRole.Matrix),
        };
        for (int e = 0; e < c.NumLocalExperts; e++)
        {
            var x = $"{p}block_sparse_moe.experts.{e}.";
            specs.Add(new(x + "w1.weight", [i, h], TensorRole.Matrix));
            specs.Add(new(x + "w2.weight", [h, i], TensorRole.Matrix));
            specs.Add(new(x + "w3.weight", [i, h], TensorRole.Matrix));
        }
        return specs;
    }

    /// <summary>Same names and shapes as Llama's ends.</summary>
    public IReadOnlyList<TensorSpec> EndTensors(ModelConfig config) => LlamaFamily.Instance.EndTensors(config);

    public DecoderBlock CreateBlock(ModelConfig config, int index, IReadOnlyDictionary<string, Tensor> weights) =>
        new MixtralBlock((MixtralConfig)config, index, weights);

    public ModelEnds CreateEnds(ModelConfig config, IReadOnlyDictionary<string, Tensor> w)
    {
        var c = (MixtralConfig)config;
        var embed = w["model.embed_tokens.weight"];
        return new ModelEnds(config, embed, null, new Norm(w["model.norm.weight"], null, c.RmsNormEps, rms: true),
            c.TieWordEmbeddings ? embed : w["lm_head.weight"]);
    }

    public ModelConfig CreateConfig(ModelShape s) => new MixtralConfig
    {
        ModelType = "mixtral", VocabSize = s.VocabSize, HiddenSize = s.HiddenSize, NumLayers = s.NumLayers,
        NumHeads = s.NumHeads, NumKvHeads = s.NumKvHeads ?? s.NumHeads, HeadDim = s.HiddenSize / s.NumHeads,
        IntermediateSize = s.IntermediateSize ?? (7 * s.HiddenSize / 2 + 63) / 64 * 64,   // Mixtral 8x7B's 3.5×
        MaxPositionEmbeddings = s.MaxPositions, TieWordEmbeddings = s.TieEmbeddings,
        BosTokenId = s.SpecialTokenId, EosTokenIds = [s.SpecialTokenId],
    };

    /// <summary>
    /// ~102M parameters: 8 experts of width 640 in 8 blocks of hidden 512 (8 query / 2 KV heads), vocab 32000
    /// (untied). Only 2 of 8 experts run per token, so a decode step reads ~45M of them.
    /// </summary>
    public ModelConfig BenchmarkConfig() => CreateConfig(new ModelShape(512, 8, 8, 2, 640, 32000, 2048, TieEmbeddings: false));
}

// ============================== block ==============================

/// <summary>
/// Mixtral decoder block: pre-RMSNorm, rotary grouped-query attention (within the sliding window when set),
/// residual, pre-RMSNorm, sparse mixture of experts, residual.
/// </summary>
public sealed class MixtralBlock : DecoderBlock
{
    readonly MixtralConfig _c;
    readonly Rotary _rotary;
    readonly Parameter input_layernorm, post_attention_layernorm;          // [H]
    readonly Parameter q_proj, k_proj, v_proj, o_proj;                     // [H*D, H] [kvH*D, H] [kvH*D, H] [H, H*D]
    readonly SparseMoe block_sparse_moe;

    public MixtralBlock(MixtralConfig c, int index, IReadOnlyDictionary<string, Tensor> w) : base($"layers.{index}", index)
    {
        _c = c;
        _rotary = new Rotary(c.HeadDim, c.RopeTheta, c.RopeScaling, c.MaxPositionEmbeddings);
        var p = $"model.layers.{index}.";
        Parameter Req(string name) => Ops.Frozen(w[p + name]);
        input_layernorm = Req("input_layernorm.weight");
        post_attention_layernorm = Req("post_attention_layernorm.weight");
        q_proj = Req("self_attn.q_proj.weight"); k_proj = Req("self_attn.k_proj.weight");
        v_proj = Req("self_attn.v_proj.weight"); o_proj = Req("self_attn.o_proj.weight");
        var experts = Enumerable.Range(0, c.NumLocalExperts).Select(e => new SwiGluExpert(
            Req($"block_sparse_moe.experts.{e}.w1.weight"), Req($"block_sparse_moe.experts.{e}.w2.weight"),
            Req($"block_sparse_moe.experts.{e}.w3.weight"))).ToArray();
        block_sparse_moe = new SparseMoe(Req("block_sparse_moe.gate.weight"), experts, c.NumExpertsPerTok);
        RegisterComponents();
    }

    public override (int KvHeads, int HeadDim) CacheShape => (_c.NumKvHeads, _c.HeadDim);

    /// <summary>The block's mixture of experts (its router is what tests and tools inspect).</summary>
    public SparseMoe Moe => block_sparse_moe;

    public override Tensor Forward(Tensor hidden, StepContext ctx, LayerCache? cache = null)
    {
        var x = Ops.RmsNorm(hidden, input_layernorm, _c.RmsNormEps);                 // [B, T, H]
        var attention = SharedLayers.RotarySelfAttention(x, ctx, cache, _rotary,
            new AttentionWeights(q_proj, k_proj, v_proj, o_proj), _c.NumHeads, _c.NumKvHeads, _c.SlidingWindow, AdapterLinear(ctx));
        var h = hidden + attention;                                                   // [B, T, H]
        var y = Ops.RmsNorm(h, post_attention_layernorm, _c.RmsNormEps);             // [B, T, H]
        return h + block_sparse_moe.Forward(y, AdapterLinear(ctx));           // [B, T, H]
    }
}
