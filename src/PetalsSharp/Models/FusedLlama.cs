using PetalsSharp.Models.Kernels;

namespace PetalsSharp.Models;

/// <summary>
/// The fused decode plan of a <see cref="LlamaBlock"/>: a <see cref="FusedRotaryBlock"/> with the
/// <see cref="FusedSwiGlu"/> MLP. The adapter slots are the attention's four linears, then gate, up, down.
/// </summary>
internal static class FusedLlama
{
    /// <summary>Null when a weight cannot be read in place or a norm is not RMSNorm.</summary>
    public static IFusedBlock? From(Norm inputNorm, RotaryAttention attn, Norm postNorm, BlockLinear gate, BlockLinear up, BlockLinear down) =>
        FusedRotaryBlock.From(inputNorm, attn, postNorm, modules => FusedSwiGlu.From(gate, up, down, modules));
}
