using static TorchSharp.torch;

namespace PetalsSharp.Models.Lora;

/// <summary>
/// A per-request change to a block's linear layers, looked up by (block index, module path inside the block, e.g.
/// <c>self_attn.q_proj</c>). Every block linear is a <see cref="BlockLinear"/>, which asks the step's adapter for its
/// update.
/// </summary>
public interface ILinearAdapter
{
    /// <summary>
    /// What to add to <c>x Wᵀ + b</c> for this module (<c>[..., out]</c>, differentiable in x), or null when the
    /// adapter leaves it alone.
    /// </summary>
    Tensor? Delta(int block, string module, Tensor x);
}

/// <summary>A family whose blocks apply <see cref="ILinearAdapter"/>s: the linear modules an adapter may target.</summary>
public interface ILoraTargets
{
    /// <summary>
    /// Module paths inside one block of <paramref name="config"/> (<c>self_attn.q_proj</c>,
    /// <c>block_sparse_moe.experts.3.w1</c>), each with a <c>.weight [out, in]</c> tensor of a <see cref="BlockLinear"/>.
    /// </summary>
    IReadOnlyList<string> LoraModules(ModelConfig config);
}
