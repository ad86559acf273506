using static TorchSharp.torch;

namespace PetalsSharp.Models;

/// <summary>
/// Deep prompt tuning (Petals' <c>deep_ptune</c>): before block i of a stack, <c>prompts[i]</c> is added to the
/// first P positions of the block's input, as Petals' servers do with <c>hidden[:, :pre_seq_len] += prompts[i]</c>.
/// </summary>
public static class BlockPrompts
{
    /// <summary>
    /// Throws unless <paramref name="prompts"/> is <c>[blocks, B or 1, P, H]</c> floating point for a stack of
    /// <paramref name="blocks"/> blocks and hidden states <paramref name="hidden"/> <c>[B, T, H]</c> with P ≤ T.
    /// </summary>
    public static void Check(Tensor prompts, int blocks, Tensor hidden)
    {
        string Shape() => $"[{string.Join(", ", prompts.shape)}]";
        if (prompts.dim() != 4)
            throw new ArgumentException($"prompts must be [blocks, batch or 1, prefix, hidden], got {Shape()}");
        if (!prompts.is_floating_point()) throw new ArgumentException($"prompts must be floating point, got {prompts.dtype}");
        if (prompts.shape[0] != blocks)
            throw new ArgumentException($"prompts {Shape()} have {prompts.shape[0]} blocks, the stack has {blocks}");
        if (prompts.shape[1] != 1 && prompts.shape[1] != hidden.shape[0])
            throw new ArgumentException($"prompts {Shape()}: batch must be 1 or {hidden.shape[0]}");
        if (prompts.shape[2] < 1 || prompts.shape[2] > hidden.shape[1])
            throw new ArgumentException($"prompts {Shape()}: prefix length must be in [1, {hidden.shape[1]}] (the tokens of this call)");
        if (prompts.shape[3] != hidden.shape[2])
            throw new ArgumentException($"prompts {Shape()}: hidden size must be {hidden.shape[2]}");
    }

    /// <summary>
    /// <paramref name="hidden"/> <c>[B, T, H]</c> with <paramref name="prompt"/> <c>[B or 1, P, H]</c> added on
    /// positions <c>[0, P)</c>; out of place, so autograd reaches both.
    /// </summary>
    public static Tensor Add(Tensor hidden, Tensor prompt)
    {
        long p = prompt.shape[1], t = hidden.shape[1];
        var prefix = hidden.narrow(1, 0, p) + prompt.to(hidden.dtype);                 // [B, P, H]
        return p == t ? prefix : cat([prefix, hidden.narrow(1, p, t - p)], 1);         // [B, T, H]
    }
}
