using static TorchSharp.torch;

namespace PetalsSharp.Models.Lora;

/// <summary>
/// A per-request change to a block's linear layers, looked up by (block index, module path inside the block, e.g.
/// <c>self_attn.q_proj</c>). A block asks for it through <see cref="DecoderBlock"/>'s <c>Linear</c> helper, so a
/// family opts in by routing its projections through that helper and implementing <see cref="ILoraTargets"/>.
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
    /// <summary>Module paths inside one block (<c>self_attn.q_proj</c>), each with a <c>.weight [out, in]</c> tensor.</summary>
    IReadOnlyList<string> LoraModules { get; }
}
