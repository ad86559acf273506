using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PetalsSharp.Models;

/// <summary>One Mixtral expert: the SwiGLU MLP <c>w2(silu(w1·x) * w3·x)</c>.</summary>
public sealed class SwiGluExpert : nn.Module
{
    readonly Parameter w1, w2, w3;   // [I, H] [H, I] [I, H]

    public SwiGluExpert(Parameter w1, Parameter w2, Parameter w3) : base("expert")
    {
        this.w1 = w1;
        this.w2 = w2;
        this.w3 = w3;
        RegisterComponents();
    }

    /// <summary>
    /// <c>x [N, H]</c> to <c>[N, H]</c>. <paramref name="linear"/> sees the expert's own module paths
    /// (<c>block_sparse_moe.experts.{index}.w1</c>), which is how an adapter addresses them.
    /// </summary>
    public Tensor Forward(Tensor x, int index = 0, SharedLayers.LinearOp? linear = null)
    {
        if (linear is null) return SharedLayers.SwiGlu(x, w1, w3, w2);                   // [N, H]
        var prefix = $"block_sparse_moe.experts.{index}.";
        return SharedLayers.SwiGlu(x, w1, w3, w2, linear: linear,
            names: new SharedLayers.SwiGluNames(prefix + "w1", prefix + "w3", prefix + "w2")); // [N, H]
    }
}

/// <summary>
/// Mixtral's sparse mixture of experts, as HF's <c>MixtralSparseMoeBlock</c> computes it: a linear router gives one
/// logit per expert, softmax over all of them in float32, the top-k are kept and renormalised to sum to 1, and each
/// token's output is the weighted sum of its k experts.
/// </summary>
public sealed class SparseMoe : nn.Module
{
    readonly Parameter gate;                            // [E, H] router
    readonly ModuleList<SwiGluExpert> experts;          // E experts
    readonly int _topK;

    public SparseMoe(Parameter router, IReadOnlyList<SwiGluExpert> experts, int topK) : base("block_sparse_moe")
    {
        gate = router;
        this.experts = new ModuleList<SwiGluExpert>(experts.ToArray());
        _topK = topK;
        RegisterComponents();
    }

    public int NumExperts => experts.Count;

    /// <summary>Routing of <c>x [N, H]</c>: renormalised weights <c>[N, k]</c> (x's dtype) and expert ids <c>[N, k]</c>.</summary>
    public (Tensor Weights, Tensor Experts) Route(Tensor x, SharedLayers.LinearOp? linear = null)
    {
        var logits = linear is null ? Ops.Linear(x, gate) : linear("block_sparse_moe.gate", x, gate, null); // [N, E]
        var probs = logits.to(ScalarType.Float32).softmax(-1);                       // [N, E]
        var (top, ids) = probs.topk(_topK, dim: -1);                                 // [N, k] [N, k]
        var weights = top / top.sum(-1, keepdim: true);                              // [N, k]
        return (weights.to(x.dtype), ids);
    }

    /// <summary><c>x [B, T, H]</c> to <c>[B, T, H]</c>; <paramref name="linear"/> routes the router and experts through an adapter.</summary>
    public Tensor Forward(Tensor x, SharedLayers.LinearOp? linear = null)
    {
        long b = x.shape[0], t = x.shape[1], h = x.shape[2];
        var flat = x.reshape(b * t, h);                                              // [N, H]
        var (weights, ids) = Route(flat, linear);                                            // [N, k] [N, k]
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
            var y = experts[e].Forward(flat.index_select(0, rows), e, linear);       // [n_e, H]
            var w = flatWeights.index_select(0, slot).unsqueeze(-1);                 // [n_e, 1]
            output = output.index_add(0, rows, y * w, 1.0);                          // [N, H]
        }
        return output.view(b, t, h);                                                 // [B, T, H]
    }
}
