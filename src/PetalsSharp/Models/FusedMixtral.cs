using PetalsSharp.Models.Kernels;

namespace PetalsSharp.Models;

/// <summary>
/// The fused decode plan of a <see cref="MixtralBlock"/>: a <see cref="FusedRotaryBlock"/> with the
/// <see cref="FusedMoe"/> MLP. The adapter slots are the attention's four linears, the router, then each expert's w1,
/// w3, w2, so a LoRA on the router or the experts is applied as low-rank products on the fused path like any other
/// module's.
/// </summary>
internal static class FusedMixtral
{
    /// <summary>Null when a weight cannot be read in place or a norm is not RMSNorm.</summary>
    public static IFusedBlock? From(Norm inputNorm, RotaryAttention attn, Norm postNorm, SparseMoe moe) =>
        FusedRotaryBlock.From(inputNorm, attn, postNorm, modules =>
        {
            var experts = Enumerable.Range(0, moe.NumExperts).Select(e => moe.Expert(e).Linears).ToArray();
            return FusedMoe.From(moe.Router, experts, moe.TopK, modules);
        });
}
