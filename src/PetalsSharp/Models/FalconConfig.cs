using System.Text.Json.Nodes;

namespace PetalsSharp.Models;

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
        Require(NumLnInParallelAttn is 1 or 2, $"num_ln_in_parallel_attn must be 1 or 2 (got {NumLnInParallelAttn})");
        // transformers itself cannot run these combinations (it builds one set of norms and reads another).
        Require(!NewDecoderArchitecture || ParallelAttn, "new_decoder_architecture requires parallel_attn");
        Require(NewDecoderArchitecture || NumLnInParallelAttn == 1, "num_ln_in_parallel_attn 2 needs new_decoder_architecture");
        Require(NewDecoderArchitecture || NumKvHeads == 1 || NumKvHeads == NumHeads,
            "the 7B-style layout has one KV head (multi_query) or one per query head");
    }

    public override JsonObject ToHfJson() => new()
    {
        ["architectures"] = new JsonArray("FalconForCausalLM"),
        ["model_type"] = "falcon",
        ["vocab_size"] = VocabSize,
        ["hidden_size"] = HiddenSize,
        ["ffn_hidden_size"] = FfnHiddenSize,
        ["num_hidden_layers"] = NumLayers,
        ["num_attention_heads"] = NumHeads,
        ["num_kv_heads"] = NumKvHeads,
        ["new_decoder_architecture"] = NewDecoderArchitecture,
        ["multi_query"] = MultiQuery,
        ["parallel_attn"] = ParallelAttn,
        ["num_ln_in_parallel_attn"] = NewDecoderArchitecture ? NumLnInParallelAttn : null,
        ["bias"] = Bias,
        ["alibi"] = Alibi,
        ["activation"] = Activation,
        ["layer_norm_epsilon"] = LayerNormEpsilon,
        ["rope_theta"] = RopeTheta,
        ["rope_scaling"] = RopeScaling is null ? null : new JsonObject { ["type"] = RopeScaling.Type, ["factor"] = RopeScaling.Factor },
        ["max_position_embeddings"] = MaxPositionEmbeddings,
        ["tie_word_embeddings"] = TieWordEmbeddings,
        ["bos_token_id"] = BosTokenId,
        ["eos_token_id"] = EosTokenIds.FirstOrDefault(),
        ["pad_token_id"] = PadTokenId,
        ["torch_dtype"] = TorchDtype ?? "float32",
    };

    internal static FalconConfig Parse(JsonConfigReader r)
    {
        var type = r.String("model_type") ?? "falcon";
        // HF maps n_embed/n_head/n_layer onto the long names after __init__, so the short ones win when both exist.
        int hidden = r.IntOrNull("n_embed") ?? r.Int("hidden_size", 4544);
        int heads = r.IntOrNull("n_head") ?? r.Int("num_attention_heads", 71);
        if (heads <= 0) throw new ConfigException($"{r.Source}: num_attention_heads must be positive");
        bool newArch = r.Bool("new_decoder_architecture", type == "RefinedWeb");
        bool multiQuery = r.Bool("multi_query", true);
        int kvHeads = newArch ? r.IntOrNull("num_kv_heads") ?? r.IntOrNull("n_head_kv") ?? heads
            : multiQuery ? 1 : heads;
        var scaling = RopeScaling.Parse(r);
        if (scaling is { Type: not ("linear" or "dynamic") })
            throw new ConfigException($"{r.Source}: Falcon supports rope_scaling linear or dynamic (got {scaling.Type})");
        return new FalconConfig
        {
            ModelType = "falcon",
            VocabSize = r.Int("vocab_size", 65024),
            HiddenSize = hidden,
            FfnHiddenSize = r.IntOrNull("ffn_hidden_size") ?? 4 * hidden,
            NumLayers = r.IntOrNull("n_layer") ?? r.Int("num_hidden_layers", 32),
            NumHeads = heads,
            NumKvHeads = kvHeads,
            HeadDim = hidden / heads,
            NewDecoderArchitecture = newArch,
            MultiQuery = multiQuery,
            ParallelAttn = r.Bool("parallel_attn", true),
            NumLnInParallelAttn = r.IntOrNull("num_ln_in_parallel_attn") ?? (newArch ? 2 : 1),
            Bias = r.Bool("bias", false),
            Alibi = r.Bool("alibi", false),
            Activation = r.String("activation") ?? "gelu",
            LayerNormEpsilon = r.Double("layer_norm_epsilon", 1e-5),
            RopeTheta = r.Double("rope_theta", 10000.0),
            RopeScaling = scaling,
            MaxPositionEmbeddings = r.Int("max_position_embeddings", 2048),
            TieWordEmbeddings = r.Bool("tie_word_embeddings", true),
            BosTokenId = r.IntOrNull("bos_token_id") ?? 11,
            EosTokenIds = r.Has("eos_token_id") ? r.IntList("eos_token_id") : [11],
            PadTokenId = r.IntOrNull("pad_token_id"),
            TorchDtype = r.String("torch_dtype"),
        };
    }
}
