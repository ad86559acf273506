using System.Text.Json.Nodes;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PetalsSharp.Models;

// ============================== config ==============================

/// <summary>Mixtral config with the transformers 4.45 defaults (Mixtral 8x7B) for absent keys.</summary>
public sealed record MixtralConfig : RotaryConfig
{
    public int NumLocalExperts { get; init; } = 8;
    public int NumExpertsPerTok { get; init; } = 2;
    /// <summary>Each query sees at most its last this-many keys (itself included); null = full causal attention.</summary>
    public int? SlidingWindow { get; init; }

    public override IModelFamily Family => MixtralFamily.Instance;
    public override int? AttentionWindow => SlidingWindow;
    protected override string Architecture => "MixtralForCausalLM";

    public override void Validate(string source)
    {
        base.Validate(source);
        void Require(bool ok, string what)
        {
            if (!ok) throw new ConfigException($"{source}: {what}");
        }
        Require(NumLocalExperts > 0, $"num_local_experts must be positive (got {NumLocalExperts})");
        Require(NumExpertsPerTok > 0 && NumExpertsPerTok <= NumLocalExperts,
            $"num_experts_per_tok must be in [1, num_local_experts = {NumLocalExperts}] (got {NumExpertsPerTok})");
        Require(SlidingWindow is null or > 0, $"sliding_window must be positive or null (got {SlidingWindow})");
    }

    protected override JsonObject OwnHfKeys()
    {
        var json = base.OwnHfKeys();
        json["num_local_experts"] = NumLocalExperts;
        json["num_experts_per_tok"] = NumExpertsPerTok;
        json["sliding_window"] = SlidingWindow;
        return json;
    }

    internal static MixtralConfig Parse(JsonConfigReader r) => ReadShared(new MixtralConfig
    {
        IntermediateSize = r.Int("intermediate_size", 14336), SlidingWindow = r.IntOrNull("sliding_window"),
        NumLocalExperts = r.Int("num_local_experts", 8), NumExpertsPerTok = r.Int("num_experts_per_tok", 2),
    }, r, new("mixtral", Vocab: 32000, Hidden: 4096, Heads: 32, Layers: 32, MaxPositions: 4096 * 32, Tie: false, Bos: 1, Eos: 2),
        kvHeads: 8, eps: 1e-5, theta: 1e6);
}

// ============================== family ==============================

/// <summary>Mixtral: Llama's attention and ends, with a sparse mixture of SwiGLU experts in place of the MLP.</summary>
public sealed class MixtralFamily() : ModelFamily(MixtralConfig.Parse, "mixtral")
{
    public static readonly MixtralFamily Instance = new();

    protected override DecoderBlock Block(ModelConfig config, int index, TensorTable t) =>
        new MixtralBlock((MixtralConfig)config, RotaryBlock.Layer(t, index));

    protected internal override ModelEnds Ends(ModelConfig config, TensorTable t) => LlamaFamily.Instance.Ends(config, t);

    public override ModelConfig CreateConfig(ModelShape s) => ModelConfig.FromShape(new MixtralConfig
    {
        IntermediateSize = s.IntermediateSize ?? (7 * s.HiddenSize / 2 + 63) / 64 * 64,   // Mixtral 8x7B's 3.5×
        RmsNormEps = 1e-5, RopeTheta = 1e6,
    }, "mixtral", s);

    /// <summary>
    /// ~102M parameters: 8 experts of width 640 in 8 blocks of hidden 512 (8 query / 2 KV heads), vocab 32000
    /// (untied). Only 2 of 8 experts run per token, so a decode step reads ~45M of them.
    /// </summary>
    public override ModelConfig BenchmarkConfig() => CreateConfig(new ModelShape(512, 8, 8, 2, 640, 32000, 2048, TieEmbeddings: false));
}

// ============================== block ==============================

/// <summary>
/// Mixtral decoder block: <see cref="RotaryBlock"/> with attention within the sliding window (when set) and a
/// sparse mixture of experts as its MLP.
/// </summary>
public sealed class MixtralBlock : RotaryBlock
{
    readonly SparseMoe block_sparse_moe;

    internal MixtralBlock(MixtralConfig c, TensorTable t) : base(c, t, slidingWindow: c.SlidingWindow)
    {
        block_sparse_moe = new SparseMoe(c, t);
        RegisterComponents();
    }

    /// <summary>The block's mixture of experts (its router is what tests and tools inspect).</summary>
    public SparseMoe Moe => block_sparse_moe;

    protected override Tensor Mlp(Tensor y, StepContext ctx) => block_sparse_moe.Forward(y, ctx.Adapter); // [B, T, H]

    Lazy<Kernels.IFusedBlock?>? _fused;

    /// <summary>Built on first use: the weights are viewed in place, so the plan lives as long as the block.</summary>
    public override Kernels.IFusedBlock? TryFuse() =>
        (_fused ??= new(() => FusedMixtral.From(InputNorm, Attention, PostNorm, block_sparse_moe))).Value;
}

/// <summary>One Mixtral expert: the SwiGLU MLP <c>w2(silu(w1·x) * w3·x)</c>.</summary>
public sealed class SwiGluExpert : nn.Module
{
    readonly BlockLinear w1, w2, w3;   // [I, H] [H, I] [I, H]

    public SwiGluExpert(TensorTable t, int index, long hidden, long intermediate) : base("expert")
    {
        var x = $"block_sparse_moe.experts.{index}.";
        w1 = t.Linear(x + "w1", intermediate, hidden);
        w2 = t.Linear(x + "w2", hidden, intermediate);
        w3 = t.Linear(x + "w3", intermediate, hidden);
        RegisterComponents();
    }

    /// <summary>The gate, up and down projections (HF's w1, w3, w2), for the fused path.</summary>
    internal (BlockLinear Gate, BlockLinear Up, BlockLinear Down) Linears => (w1, w3, w2);

    /// <summary><c>x [N, H]</c> to <c>[N, H]</c>.</summary>
    public Tensor Forward(Tensor x, Lora.ILinearAdapter? adapter = null) => SwiGlu.Forward(x, w1, w3, w2, adapter); // [N, H]
}

/// <summary>
/// Mixtral's sparse mixture of experts, as HF's <c>MixtralSparseMoeBlock</c> computes it: a linear router gives one
/// logit per expert, softmax over all of them in float32, the top-k are kept and renormalised to sum to 1, and each
/// token's output is the weighted sum of its k experts.
/// </summary>
public sealed class SparseMoe : nn.Module
{
    readonly BlockLinear gate;                          // [E, H] router
    readonly ModuleList<SwiGluExpert> experts;          // E experts
    readonly int _topK;

    public SparseMoe(MixtralConfig c, TensorTable t) : base("block_sparse_moe")
    {
        gate = t.Linear("block_sparse_moe.gate", c.NumLocalExperts, c.HiddenSize, exact: true);
        experts = new ModuleList<SwiGluExpert>(Enumerable.Range(0, c.NumLocalExperts)
            .Select(e => new SwiGluExpert(t, e, c.HiddenSize, c.IntermediateSize)).ToArray());
        _topK = c.NumExpertsPerTok;
        RegisterComponents();
    }

    public int NumExperts => experts.Count;

    /// <summary>The router <c>[E, H]</c>, the experts and k, for the fused path.</summary>
    internal BlockLinear Router => gate;
    internal SwiGluExpert Expert(int e) => experts[e];
    internal int TopK => _topK;

    /// <summary>Routing of <c>x [N, H]</c>: renormalised weights <c>[N, k]</c> (x's dtype) and expert ids <c>[N, k]</c>.</summary>
    public (Tensor Weights, Tensor Experts) Route(Tensor x, Lora.ILinearAdapter? adapter = null)
    {
        var logits = gate.Forward(x, adapter);                                       // [N, E]
        var probs = logits.to(ScalarType.Float32).softmax(-1);                       // [N, E]
        var (top, ids) = probs.topk(_topK, dim: -1);                                 // [N, k] [N, k]
        var weights = top / top.sum(-1, keepdim: true);                              // [N, k]
        return (weights.to(x.dtype), ids);
    }

    /// <summary><c>x [B, T, H]</c> to <c>[B, T, H]</c>; <paramref name="adapter"/> may change the router and experts.</summary>
    public Tensor Forward(Tensor x, Lora.ILinearAdapter? adapter = null)
    {
        long b = x.shape[0], t = x.shape[1], h = x.shape[2];
        var flat = x.reshape(b * t, h);                                              // [N, H]
        var (weights, ids) = Route(flat, adapter);                                   // [N, k] [N, k]
        // Group the (token, slot) pairs by expert on the host, so each expert runs once on just its tokens and a
        // decode step touches only k experts' weights.
        var chosen = ids.cpu().data<long>().ToArray();                               // N*k, row-major
        var slots = new List<long>[experts.Count];
        for (int i = 0; i < chosen.Length; i++) (slots[chosen[i]] ??= []).Add(i);
        var output = zeros_like(flat);                                               // [N, H]
        var flatWeights = weights.reshape(-1);                                       // [N*k]
        for (int e = 0; e < experts.Count; e++)
        {
            if (slots[e] is not { } mine) continue;
            var slot = tensor(mine.ToArray(), device: x.device);                     // [n_e] indices into N*k
            var rows = tensor(mine.Select(s => s / _topK).ToArray(), device: x.device); // [n_e] token rows
            var y = experts[e].Forward(flat.index_select(0, rows), adapter);         // [n_e, H]
            var w = flatWeights.index_select(0, slot).unsqueeze(-1);                 // [n_e, 1]
            output = output.index_add(0, rows, y * w, 1.0);                          // [N, H]
        }
        return output.view(b, t, h);                                                 // [B, T, H]
    }
}
