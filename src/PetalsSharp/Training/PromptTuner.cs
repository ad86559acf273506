using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PetalsSharp.Training;

/// <summary>
/// Trainable prompts, as Petals' <c>PTuneMixin</c>: <c>prompt_embeddings [P, H]</c> go in front of the token
/// embeddings (before any embedding norm), and with deep prompt tuning <c>intermediate_prompt_embeddings [L, P, H]</c>
/// are added to the first P positions of every block's input. Petals starts the intermediate prompts at zero, so
/// a deep run starts from exactly the shallow model.
/// </summary>
public sealed class PromptTuner : nn.Module
{
    readonly Parameter prompt_embeddings;                 // [P, H]
    readonly Parameter? intermediate_prompt_embeddings;   // [L, P, H]

    /// <param name="prompts">Initial virtual-token embeddings <c>[P, H]</c> (copied).</param>
    /// <param name="intermediate">Initial deep prompts <c>[L, P, H]</c> (copied), or null for shallow prompt tuning.</param>
    public PromptTuner(Tensor prompts, Tensor? intermediate = null) : base("prompt_tuner")
    {
        if (prompts.dim() != 2 || prompts.shape[0] < 1)
            throw new ArgumentException($"prompt embeddings must be [prefix, hidden], got [{string.Join(", ", prompts.shape)}]");
        if (intermediate is not null && (intermediate.dim() != 3 || intermediate.shape[1] != prompts.shape[0] || intermediate.shape[2] != prompts.shape[1]))
            throw new ArgumentException($"intermediate prompts must be [blocks, {prompts.shape[0]}, {prompts.shape[1]}], got [{string.Join(", ", intermediate.shape)}]");
        // Parameters outlive any dispose scope the caller is in.
        prompt_embeddings = new Parameter(prompts.detach().to(ScalarType.Float32).clone().DetachFromDisposeScope(), requires_grad: true);
        intermediate_prompt_embeddings = intermediate is null ? null
            : new Parameter(intermediate.detach().to(ScalarType.Float32).clone().DetachFromDisposeScope(), requires_grad: true);
        prompt_embeddings.DetachFromDisposeScope();
        intermediate_prompt_embeddings?.DetachFromDisposeScope();
        RegisterComponents();
    }

    /// <summary>
    /// Fresh prompts for a model: the prefix drawn like the model's own embeddings (normal with their standard
    /// deviation, so virtual tokens start at the scale the blocks expect), deep prompts at zero as in Petals.
    /// </summary>
    public static PromptTuner Create(Tensor embeddingWeight, int preSeqLen, int numBlocks, bool deep, long seed = 0)
    {
        if (preSeqLen < 1) throw new ArgumentOutOfRangeException(nameof(preSeqLen), "pre_seq_len must be at least 1");
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)seed);
        var hidden = embeddingWeight.shape[1];
        var std = embeddingWeight.to(ScalarType.Float32).std().item<float>();
        var prompts = randn([preSeqLen, hidden], generator: gen) * std;                  // [P, H]
        var intermediate = deep ? zeros(numBlocks, preSeqLen, hidden) : null;            // [L, P, H]
        return new PromptTuner(prompts, intermediate);
    }

    /// <summary>Virtual tokens P.</summary>
    public int PreSeqLen => (int)prompt_embeddings.shape[0];

    public bool Deep => intermediate_prompt_embeddings is not null;

    /// <summary>The virtual-token embeddings <c>[P, H]</c>.</summary>
    public Parameter Prompts => prompt_embeddings;

    /// <summary>The deep prompts <c>[L, P, H]</c>, or null.</summary>
    public Parameter? IntermediatePrompts => intermediate_prompt_embeddings;

    /// <summary>Token embeddings <c>[B, T, H]</c> → <c>[B, P+T, H]</c> with the virtual tokens first.</summary>
    public Tensor Prepend(Tensor tokenEmbeddings)
    {
        var batch = tokenEmbeddings.shape[0];
        var prefix = prompt_embeddings.to(tokenEmbeddings.dtype).unsqueeze(0).expand(batch, -1, -1);   // [B, P, H]
        return cat([prefix, tokenEmbeddings], 1);                                                      // [B, P+T, H]
    }

    /// <summary>Deep prompts as a block stack takes them, <c>[L, 1, P, H]</c>, or null in shallow mode.</summary>
    public Tensor? BlockPrompts() => intermediate_prompt_embeddings?.unsqueeze(1);
}
