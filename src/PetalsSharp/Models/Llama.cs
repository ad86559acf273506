using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace PetalsSharp.Models;

// ============================== config ==============================

/// <summary>
/// What Llama and Mixtral configs share: RMSNorm, rotary grouped-query attention and a SwiGLU width. Their defaults
/// differ, so each family reads the shared keys with its own.
/// </summary>
public abstract record RotaryConfig : ModelConfig
{
    /// <summary>Width of the SwiGLU MLP (of each expert in Mixtral).</summary>
    public required int IntermediateSize { get; init; }
    public double RmsNormEps { get; init; } = 1e-6;
    public double RopeTheta { get; init; } = 10000.0;
    public RopeScaling? RopeScaling { get; init; }
    public string HiddenAct { get; init; } = "silu";

    public override void Validate(string source)
    {
        base.Validate(source);
        if (IntermediateSize <= 0) throw new ConfigException($"{source}: intermediate_size must be positive");
        if (HeadDim % 2 != 0) throw new ConfigException($"{source}: head_dim must be even for rotary (got {HeadDim})");
        if (HiddenAct != "silu") throw new ConfigException($"{source}: hidden_act '{HiddenAct}' is not supported (only silu)");
    }

    protected override JsonObject OwnHfKeys() => new()
    {
        ["intermediate_size"] = IntermediateSize, ["num_hidden_layers"] = NumLayers, ["num_attention_heads"] = NumHeads,
        ["num_key_value_heads"] = NumKvHeads, ["head_dim"] = HeadDim, ["hidden_act"] = HiddenAct,
        ["rms_norm_eps"] = RmsNormEps, ["rope_theta"] = RopeTheta, ["rope_scaling"] = RopeScaling?.ToJson(),
        ["max_position_embeddings"] = MaxPositionEmbeddings,
    };

    /// <summary><paramref name="config"/> with the shared keys read; null <paramref name="kvHeads"/> defaults to one per query head.</summary>
    internal static T ReadShared<T>(T config, JsonConfigReader r, CommonDefaults d, int? kvHeads, double eps, double theta)
        where T : RotaryConfig
    {
        var c = ReadCommon(config, r, d);
        return (T)((RotaryConfig)c with
        {
            NumKvHeads = r.Int("num_key_value_heads", kvHeads ?? c.NumHeads),
            // transformers 4.45 derives Mixtral's head_dim; later versions read it when present, as Llama's does.
            HeadDim = r.Int("head_dim", c.HeadDim),
            RmsNormEps = r.Double("rms_norm_eps", eps),
            RopeTheta = r.Double("rope_theta", theta),
            RopeScaling = RopeScaling.Parse(r),
            HiddenAct = r.String("hidden_act") ?? "silu",
        });
    }
}

/// <summary>Llama 2/3/3.1 config with the transformers 4.45 defaults for absent keys.</summary>
public sealed record LlamaConfig : RotaryConfig
{
    public bool AttentionBias { get; init; }
    public bool MlpBias { get; init; }

    public override IModelFamily Family => LlamaFamily.Instance;
    protected override string Architecture => "LlamaForCausalLM";

    protected override JsonObject OwnHfKeys()
    {
        var json = base.OwnHfKeys();
        json["attention_bias"] = AttentionBias;
        json["mlp_bias"] = MlpBias;
        return json;
    }

    internal static LlamaConfig Parse(JsonConfigReader r) => ReadShared(new LlamaConfig
    {
        IntermediateSize = r.Int("intermediate_size", 11008),
        AttentionBias = r.Bool("attention_bias", false), MlpBias = r.Bool("mlp_bias", false),
    }, r, new("llama", Vocab: 32000, Hidden: 4096, Heads: 32, Layers: 32, MaxPositions: 2048, Tie: false, Bos: 1, Eos: 2),
        kvHeads: null, eps: 1e-6, theta: 10000.0);
}

// ============================== family ==============================

/// <summary>Llama: config keys, and the builders of the block and the client-side ends (which name its tensors).</summary>
public sealed class LlamaFamily() : ModelFamily(LlamaConfig.Parse, "llama")
{
    public static readonly LlamaFamily Instance = new();

    protected override DecoderBlock Block(ModelConfig config, int index, TensorTable t) =>
        new LlamaBlock((LlamaConfig)config, RotaryBlock.Layer(t, index));

    /// <summary>Embeddings, final RMSNorm and LM head; Mixtral's are the same.</summary>
    protected internal override ModelEnds Ends(ModelConfig config, TensorTable t) =>
        ModelEnds.Take(config, t, "model.embed_tokens", "model.norm", ((RotaryConfig)config).RmsNormEps, rms: true);

    public override ModelConfig CreateConfig(ModelShape s) => ModelConfig.FromShape(new LlamaConfig
    {
        IntermediateSize = s.IntermediateSize ?? (8 * s.HiddenSize / 3 + 63) / 64 * 64, RmsNormEps = 1e-5,
    }, "llama", s);

    /// <summary>The ~100M model of the issue: hidden 768, 12 layers, 12 heads, 4 KV heads, MLP 2048, vocab 32000.</summary>
    public override ModelConfig BenchmarkConfig() => CreateConfig(new ModelShape(768, 12, 12, 4, 2048, 32000, 2048, TieEmbeddings: false));
}

// ============================== block ==============================

/// <summary>
/// The pre-norm block Llama and Mixtral share: RMSNorm, rotary grouped-query attention, residual, RMSNorm, the
/// family's MLP, residual.
/// </summary>
public abstract class RotaryBlock : DecoderBlock
{
    readonly RotaryConfig _c;
    readonly Norm input_layernorm, post_attention_layernorm;   // [H] [H]
    readonly RotaryAttention self_attn;

    /// <summary>Block <paramref name="index"/>'s table: its tensors are <c>model.layers.{index}.*</c>.</summary>
    internal static TensorTable Layer(TensorTable t, int index) => t.ForBlock(index, $"model.layers.{index}.");

    protected RotaryBlock(RotaryConfig c, TensorTable t, bool qkvBias = false, bool outBias = false, int? slidingWindow = null)
        : base($"layers.{t.Block}", t.Block)
    {
        _c = c;
        var rotary = new Rotary(c.HeadDim, c.RopeTheta, c.RopeScaling, c.MaxPositionEmbeddings);
        input_layernorm = t.Norm("input_layernorm", c.HiddenSize, c.RmsNormEps, rms: true);
        self_attn = new RotaryAttention(t, c, rotary, qkvBias, outBias, slidingWindow);
        post_attention_layernorm = t.Norm("post_attention_layernorm", c.HiddenSize, c.RmsNormEps, rms: true);
        // Registered by hand: RegisterComponents in the derived class does not see a base class's private fields.
        register_module(nameof(input_layernorm), input_layernorm);
        register_module(nameof(self_attn), self_attn);
        register_module(nameof(post_attention_layernorm), post_attention_layernorm);
    }

    public override (int KvHeads, int HeadDim) CacheShape => (_c.NumKvHeads, _c.HeadDim);

    internal Norm InputNorm => input_layernorm;
    internal RotaryAttention Attention => self_attn;
    internal Norm PostNorm => post_attention_layernorm;

    /// <summary>The family's MLP: <c>y [B, T, H]</c> to <c>[B, T, H]</c>.</summary>
    protected abstract Tensor Mlp(Tensor y, StepContext ctx);

    public override Tensor Forward(Tensor hidden, StepContext ctx, LayerCache? cache = null)
    {
        var x = input_layernorm.Forward(hidden);                  // [B, T, H]
        var h = hidden + self_attn.Forward(x, ctx, cache);        // [B, T, H]
        var y = post_attention_layernorm.Forward(h);              // [B, T, H]
        return h + Mlp(y, ctx);                                   // [B, T, H]
    }
}

/// <summary>
/// Llama decoder block: <see cref="RotaryBlock"/> with a SwiGLU MLP. The same block serves Llama 2, 3 and 3.1, Mistral
/// (with a sliding window) and Qwen2 (with q/k/v biases): they differ only in which biases exist and the window.
/// </summary>
public sealed class LlamaBlock : RotaryBlock
{
    readonly BlockLinear gate_proj, up_proj, down_proj;   // [I, H] [I, H] [H, I]

    internal LlamaBlock(LlamaConfig c, TensorTable t) : this(c, t, c.AttentionBias, c.AttentionBias, c.MlpBias, slidingWindow: null)
    {
    }

    internal LlamaBlock(RotaryConfig c, TensorTable t, bool qkvBias, bool outBias, bool mlpBias, int? slidingWindow)
        : base(c, t, qkvBias, outBias, slidingWindow)
    {
        long h = c.HiddenSize, i = c.IntermediateSize;
        gate_proj = t.Linear("mlp.gate_proj", i, h, mlpBias);
        up_proj = t.Linear("mlp.up_proj", i, h, mlpBias);
        down_proj = t.Linear("mlp.down_proj", h, i, mlpBias);
        RegisterComponents();
    }

    protected override Tensor Mlp(Tensor y, StepContext ctx) => SwiGlu.Forward(y, gate_proj, up_proj, down_proj, ctx.Adapter); // [B, T, H]

    Lazy<Kernels.IFusedBlock?>? _fused;

    /// <summary>Built on first use: the weights are viewed in place, so the plan lives as long as the block.</summary>
    public override Kernels.IFusedBlock? TryFuse() =>
        (_fused ??= new(() => FusedLlama.From(InputNorm, Attention, PostNorm, gate_proj, up_proj, down_proj))).Value;
}
