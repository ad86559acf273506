using PetalsSharp.Models;
using PetalsSharp.Models.Quant;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PetalsSharp.Training;

/// <summary>How to set up a tuned model.</summary>
/// <param name="Mode">What is trained.</param>
/// <param name="PreSeqLen">Virtual tokens P (prompt modes).</param>
/// <param name="LoraRank">r (adapter mode).</param>
/// <param name="LoraAlpha">PEFT's lora_alpha (adapter mode); the update is scaled by alpha / r.</param>
/// <param name="Seed">Seed of the initial prompts / LoRA A.</param>
public sealed record TuningOptions(TuningMode Mode, int PreSeqLen = 16, int LoraRank = 8, double LoraAlpha = 16, long Seed = 0);

/// <summary>
/// A <see cref="CausalLM"/> (local or distributed) with small trainable parts on the client: prompts (Petals'
/// ptune/deep_ptune), LoRA on the LM head, or a trainable head. The blocks stay frozen; with remote blocks the
/// gradients come back through the servers' Backward.
/// </summary>
public sealed class TunedModel : nn.Module
{
    readonly PromptTuner? prompts;
    readonly LoraLinear? lm_head_lora;
    readonly Parameter? lm_head;    // [V, H] trainable copy (head mode)

    /// <summary>
    /// Training starts from the exact embeddings and head (prompts are initialised from embedding rows, head modes
    /// copy or wrap the head); the servers' spans may still be quantized (QLoRA-style: adapters stay f32).
    /// </summary>
    static CausalLM ExactEnds(CausalLM model) => model.Ends.Quant == QuantFormat.None ? model
        : throw new NotSupportedException($"training needs the client's embeddings and head exact, not {model.Ends.Quant.Name()}: " +
            "load the client without --quant (servers may still serve quantized blocks)");

    public TunedModel(CausalLM model, TuningOptions options) : this(model, options,
        options.Mode.UsesPrompts()
            ? PromptTuner.Create(ExactEnds(model).Ends.EmbeddingWeight, options.PreSeqLen, model.Config.NumLayers, options.Mode == TuningMode.DeepPTune, options.Seed)
            : null)
    {
    }

    /// <summary>With given prompts (e.g. loaded from a file or a reference fixture).</summary>
    public TunedModel(CausalLM model, TuningOptions options, PromptTuner? tuner) : base("tuned")
    {
        Model = ExactEnds(model);
        Options = options;
        if (options.Mode.UsesPrompts())
        {
            prompts = tuner ?? throw new ArgumentNullException(nameof(tuner), "prompt modes need prompts");
            if (prompts.Prompts.shape[1] != model.Config.HiddenSize)
                throw new ArgumentException($"prompts have hidden size {prompts.Prompts.shape[1]}, the model {model.Config.HiddenSize}");
            if (prompts.Deep != (options.Mode == TuningMode.DeepPTune))
                throw new ArgumentException($"mode {TuningModes.Name(options.Mode)} does not match the prompts given (deep: {prompts.Deep})");
            if (prompts.IntermediatePrompts is { } deep && deep.shape[0] != model.Config.NumLayers)
                throw new ArgumentException($"deep prompts cover {deep.shape[0]} blocks, the model has {model.Config.NumLayers}");
        }
        else if (options.Mode == TuningMode.Adapter)
            lm_head_lora = new LoraLinear(model.Ends.HeadWeight, null, options.LoraRank, options.LoraAlpha, options.Seed);
        else if (options.Mode == TuningMode.Head)
        {
            lm_head = new Parameter(model.Ends.HeadWeight.detach().to(ScalarType.Float32).clone().DetachFromDisposeScope(), requires_grad: true);
            lm_head.DetachFromDisposeScope();
        }
        RegisterComponents();
    }

    public CausalLM Model { get; }
    public TuningOptions Options { get; }
    public TuningMode Mode => Options.Mode;

    /// <summary>The prompts (prompt modes), else null.</summary>
    public PromptTuner? Prompts => prompts;

    /// <summary>The head's LoRA (adapter mode), else null.</summary>
    public LoraLinear? HeadLora => lm_head_lora;

    /// <summary>Virtual tokens P (0 without prompts).</summary>
    public int PrefixLength => prompts?.PreSeqLen ?? 0;

    /// <summary>The trainable parameters with the names they are saved under.</summary>
    public IReadOnlyList<(string Name, Parameter Parameter)> Trainable => named_parameters().Where(p => p.parameter.requires_grad)
        .Select(p => (SavedName(p.name), p.parameter)).ToList();

    /// <summary>Petals' / PEFT's names: the module path without this wrapper's field prefixes.</summary>
    static string SavedName(string name) => name.StartsWith("prompts.", StringComparison.Ordinal) ? name["prompts.".Length..]
        : name.StartsWith("lm_head_lora.", StringComparison.Ordinal) ? "lm_head." + name["lm_head_lora.".Length..]
        : name == "lm_head" ? "lm_head.weight" : name;

    /// <summary>Final-normed hidden states <c>[B, T, H]</c> of the real tokens of <paramref name="inputIds"/> <c>[B, T]</c>.</summary>
    public Tensor Hidden(Tensor inputIds)
    {
        var ends = Model.Ends;
        long t = inputIds.shape[1];
        var embedded = ends.EmbedTokens(inputIds);                                        // [B, T, H]
        if (prompts is not null) embedded = prompts.Prepend(embedded);                   // [B, P+T, H]
        var h = Model.Blocks.Forward(ends.AfterEmbedding(embedded),
            new ForwardOptions(Prompts: prompts?.BlockPrompts()));                        // [B, P+T, H]
        if (prompts is not null) h = h.narrow(1, prompts.PreSeqLen, t);                  // [B, T, H]
        return ends.FinalNorm(h);                                                         // [B, T, H]
    }

    /// <summary>Normed hidden states <c>[B, T, H]</c> to logits <c>[B, T, V]</c> through the (tuned) head.</summary>
    public Tensor Logits(Tensor normed) =>
        lm_head_lora is not null ? lm_head_lora.forward(normed)
        : lm_head is not null ? Ops.Linear(normed, lm_head)
        : Model.Ends.Logits(normed);

    /// <summary>Logits <c>[B, T, V]</c> of the real positions (virtual positions dropped, as in Petals).</summary>
    public Tensor Forward(Tensor inputIds) => Logits(Hidden(inputIds));

    /// <summary>
    /// Mean next-token cross-entropy: <c>logits[:, j]</c> against <c>labels[:, j+1]</c>, skipping labels equal to
    /// <see cref="IgnoreIndex"/> (HF's convention; labels are usually the input ids).
    /// </summary>
    public Tensor Loss(Tensor inputIds, Tensor? labels = null) => CausalLoss(Forward(inputIds), labels ?? inputIds);

    /// <summary>Label value that is not scored.</summary>
    public const long IgnoreIndex = -100;

    /// <summary>HF's shifted causal-LM loss over logits <c>[B, T, V]</c> and labels <c>[B, T]</c>.</summary>
    public static Tensor CausalLoss(Tensor logits, Tensor labels)
    {
        long v = logits.shape[2], t = logits.shape[1];
        var scores = logits.narrow(1, 0, t - 1).reshape(-1, v);                           // [B*(T-1), V]
        var targets = labels.narrow(1, 1, t - 1).reshape(-1);                             // [B*(T-1)]
        return F.cross_entropy(scores, targets, ignore_index: IgnoreIndex);
    }

    /// <summary><c>loss.backward()</c>, surfacing a failed remote Backward as an exception (see <see cref="IBlockStack.Backward"/>).</summary>
    public void Backward(Tensor loss) => Model.Blocks.Backward(loss);

    /// <summary>What generation needs to apply the tuning (values copied: later training does not change them).</summary>
    public Generation.GenerationTuning ForGeneration()
    {
        using var noGrad = no_grad();
        var prefix = prompts?.Prompts.detach().clone().DetachFromDisposeScope();
        var deep = prompts?.BlockPrompts()?.detach().clone().DetachFromDisposeScope();
        Func<Tensor, Tensor>? logits = Mode is TuningMode.Adapter or TuningMode.Head ? normed =>
        {
            using var _ = no_grad();
            return Logits(normed);
        }
        : null;
        return new Generation.GenerationTuning(prefix, deep, logits);
    }
}
