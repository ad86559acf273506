using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PetalsSharp.Training;

/// <summary>
/// LoRA over a frozen linear weight, with PEFT's names and shapes: <c>y = x Wᵀ + b + scale · (x Aᵀ) Bᵀ</c>,
/// <c>lora_A.weight [r, in]</c>, <c>lora_B.weight [out, r]</c>, <c>scale = alpha / r</c>. A starts as nn.Linear's
/// default (Kaiming-uniform) and B at zero, so the wrapped layer starts out unchanged, as in PEFT.
/// </summary>
public sealed class LoraLinear : nn.Module<Tensor, Tensor>
{
    readonly Linear lora_A;          // weight [r, in]
    readonly Linear lora_B;          // weight [out, r]
    readonly FrozenWeight _base;     // not a registered parameter: it belongs to the model, not to the adapter

    /// <param name="weight">The frozen weight <c>[out, in]</c> (kept by reference).</param>
    /// <param name="bias">Its frozen bias <c>[out]</c>, if any.</param>
    /// <param name="rank">r.</param>
    /// <param name="alpha">PEFT's lora_alpha; the update is scaled by alpha / r.</param>
    /// <param name="seed">Seed of A's initialisation.</param>
    public LoraLinear(Tensor weight, Tensor? bias, int rank, double alpha, long seed = 0) : base("lora")
    {
        if (weight.dim() != 2) throw new ArgumentException($"a linear weight is [out, in], got [{string.Join(", ", weight.shape)}]");
        if (rank < 1) throw new ArgumentOutOfRangeException(nameof(rank), "LoRA rank must be at least 1");
        _base = new FrozenWeight(weight, bias);
        Rank = rank;
        Alpha = alpha;
        Scale = alpha / rank;
        long outF = weight.shape[0], inF = weight.shape[1];
        using (var _ = no_grad())
        {
            lora_A = nn.Linear(inF, rank, hasBias: false);
            lora_B = nn.Linear(rank, outF, hasBias: false);
            SeededInit.KaimingUniform(lora_A.weight!, seed);   // PEFT's init of A, from its own generator
            lora_B.weight!.zero_();
        }
        RegisterComponents();
    }

    public int Rank { get; }
    public double Alpha { get; }
    public double Scale { get; }

    /// <summary>A <c>[r, in]</c>.</summary>
    public Parameter A => lora_A.weight!;

    /// <summary>B <c>[out, r]</c>.</summary>
    public Parameter B => lora_B.weight!;

    /// <summary><c>x [..., in]</c> → <c>[..., out]</c>.</summary>
    public override Tensor forward(Tensor x)
    {
        var frozen = Models.Ops.Linear(x, _base.Weight, _base.Bias);                   // [..., out]
        return frozen + lora_B.forward(lora_A.forward(x)) * Scale;                     // [..., out]
    }

    /// <summary>Holds the wrapped weight outside the module's parameter list.</summary>
    sealed record FrozenWeight(Tensor Weight, Tensor? Bias);
}
