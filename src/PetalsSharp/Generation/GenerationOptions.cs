using PetalsSharp.Models;
using static TorchSharp.torch;

namespace PetalsSharp.Generation;

/// <summary>How to generate. The defaults are Hugging Face's: greedy, 20 new tokens, stop on EOS.</summary>
public sealed record GenerationOptions
{
    public int MaxNewTokens { get; init; } = 20;

    /// <summary>Sample from the distribution; false picks the argmax (greedy).</summary>
    public bool DoSample { get; init; }

    public double Temperature { get; init; } = 1.0;

    /// <summary>Keep only the K most likely tokens (0 = off).</summary>
    public int TopK { get; init; }

    /// <summary>Keep the smallest set of tokens whose probability reaches P (1 = off).</summary>
    public double TopP { get; init; } = 1.0;

    /// <summary>HF/CTRL repetition penalty over prompt and generated tokens (1 = off).</summary>
    public double RepetitionPenalty { get; init; } = 1.0;

    /// <summary>Seed of the sampler's RNG; the same seed gives the same tokens.</summary>
    public int? Seed { get; init; }

    /// <summary>End-of-sequence ids; null takes the model config's.</summary>
    public IReadOnlyList<int>? EosTokenIds { get; init; }

    /// <summary>Keep generating past EOS (as the HF reference fixtures do).</summary>
    public bool IgnoreEos { get; init; }

    /// <summary>A row stops when its generated text contains one of these; the text is cut before it.</summary>
    public IReadOnlyList<string> StopStrings { get; init; } = [];

    /// <summary>User logits processors, run after the repetition penalty and before temperature/top-k/top-p.</summary>
    public IReadOnlyList<ILogitsProcessor> LogitsProcessors { get; init; } = [];

    /// <summary>Replaces the built-in greedy/multinomial choice (custom sampling).</summary>
    public ITokenSampler? Sampler { get; init; }

    /// <summary>
    /// HF hidden-state indices (0 = embeddings, i = block i-1's output, L = after the final norm) to return for
    /// every position of the prompt and the generated tokens.
    /// </summary>
    public IReadOnlyList<int> HiddenStateLayers { get; init; } = [];

    /// <summary>A fine-tuned model's prompts and head (see <c>Training.TunedModel.ForGeneration</c>), or null.</summary>
    public GenerationTuning? Tuning { get; init; }

    /// <summary>
    /// Routing of the generation's inference session (one request's server lists, adapter and route callback) instead
    /// of the model's; server lists and adapters need a distributed model.
    /// </summary>
    public RouteOverrides? Routing { get; init; }

    /// <summary>
    /// Run on this open session instead of a new one (one prompt, no virtual tokens or hidden states): the prompt's
    /// prefix that its cache holds is not sent again. The caller keeps and disposes it.
    /// </summary>
    public ReusableSession? Reuse { get; init; }

    /// <summary>Beam search with this many beams (one prompt at a time, greedy scores); 1 = off. As HF's <c>num_beams</c>.</summary>
    public int NumBeams { get; init; } = 1;

    /// <summary>Beam search: a finished beam's score is its log-probability ÷ generated length^this (HF's <c>length_penalty</c>).</summary>
    public double LengthPenalty { get; init; } = 1.0;

    /// <summary>Beam search: stop once <see cref="NumBeams"/> beams have finished (HF's <c>early_stopping=True</c>).</summary>
    public bool EarlyStopping { get; init; }

    /// <summary>Speculative decoding (one prompt at a time); null decodes one token per step.</summary>
    public SpeculativeOptions? Speculative { get; init; }

    public void Validate(int numLayers)
    {
        Speculative?.Validate();
        if (NumBeams < 1 || NumBeams > 512) throw new ArgumentOutOfRangeException(nameof(NumBeams), $"num_beams must be in [1, 512] (got {NumBeams})");
        if (NumBeams > 1 && (DoSample || Speculative is not null || Sampler is not null))
            throw new NotSupportedException("beam search scores beams greedily: it does not combine with sampling, a custom sampler or speculative decoding");
        if (!double.IsFinite(LengthPenalty)) throw new ArgumentOutOfRangeException(nameof(LengthPenalty), "length_penalty must be a finite number");
        if (MaxNewTokens < 0) throw new ArgumentOutOfRangeException(nameof(MaxNewTokens), "max_new_tokens must be >= 0");
        if (!(Temperature > 0) || double.IsInfinity(Temperature)) throw new ArgumentOutOfRangeException(nameof(Temperature), "temperature must be a positive number");
        if (TopK < 0) throw new ArgumentOutOfRangeException(nameof(TopK), "top_k must be >= 0");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentOutOfRangeException(nameof(TopP), "top_p must be in (0, 1]");
        if (!(RepetitionPenalty > 0)) throw new ArgumentOutOfRangeException(nameof(RepetitionPenalty), "repetition_penalty must be positive");
        foreach (var l in HiddenStateLayers)
            if (l < 0 || l > numLayers) throw new ArgumentOutOfRangeException(nameof(HiddenStateLayers), $"hidden state layer {l} is outside [0, {numLayers}]");
    }
}

/// <summary>Rewrites next-token scores, as HF's <c>LogitsProcessor</c> does.</summary>
public interface ILogitsProcessor
{
    /// <param name="sequences">Every token so far per row (prompt and generated, no padding).</param>
    /// <param name="scores">Next-token scores <c>[B, V]</c> float32.</param>
    /// <returns>New scores <c>[B, V]</c>.</returns>
    Tensor Process(IReadOnlyList<IReadOnlyList<int>> sequences, Tensor scores);
}

/// <summary>Picks the next token of every row from processed scores <c>[B, V]</c>.</summary>
public interface ITokenSampler
{
    int[] Sample(Tensor scores);
}

/// <summary>A logits processor from a lambda.</summary>
public sealed class LogitsProcessor(Func<IReadOnlyList<IReadOnlyList<int>>, Tensor, Tensor> process) : ILogitsProcessor
{
    public Tensor Process(IReadOnlyList<IReadOnlyList<int>> sequences, Tensor scores) => process(sequences, scores);
}

/// <summary>Why a row stopped.</summary>
public enum FinishReason
{
    /// <summary>max_new_tokens reached.</summary>
    Length,
    /// <summary>An end-of-sequence token was produced.</summary>
    EndOfSequence,
    /// <summary>A stop string appeared.</summary>
    StopString,
}

/// <summary>One step of a stream: the token each row produced (null once a row has finished) and its new text.</summary>
public sealed record GenerationStep(int Index, IReadOnlyList<int?> Tokens, IReadOnlyList<string> TextDeltas);

/// <summary>The outcome of a generation.</summary>
/// <param name="Sequences">Prompt then generated tokens, per row (no padding).</param>
/// <param name="NewTokens">Generated tokens per row, including an EOS that ended the row.</param>
/// <param name="Texts">Decoded generated text per row (empty strings without a tokenizer).</param>
/// <param name="FinishReasons">Why each row stopped.</param>
/// <param name="HiddenStates">Requested layer → <c>[B, S, H]</c> over the padded prompt and every step.</param>
public sealed record GenerationResult(
    IReadOnlyList<IReadOnlyList<int>> Sequences,
    IReadOnlyList<IReadOnlyList<int>> NewTokens,
    IReadOnlyList<string> Texts,
    IReadOnlyList<FinishReason> FinishReasons,
    IReadOnlyDictionary<int, Tensor> HiddenStates)
{
    /// <summary>Steps, proposed and accepted draft tokens of a speculative generation; null otherwise.</summary>
    public SpeculationStats? Speculation { get; init; }

    /// <summary>Prompt tokens a <see cref="GenerationOptions.Reuse"/>d session's cache held already (not sent again).</summary>
    public int CachedTokens { get; init; }
}

/// <summary>
/// What a fine-tuned model adds to generation. Virtual tokens go in front of each row's prompt (after its left
/// padding) on the prefill step; deep prompts are sent with the prefill step only, as Petals does.
/// </summary>
/// <param name="Prefix">Virtual-token embeddings <c>[P, H]</c>, or null.</param>
/// <param name="DeepPrompts">Per-block prompts <c>[L, 1, P, H]</c> (needs <paramref name="Prefix"/>), or null.</param>
/// <param name="Logits">Replaces the LM head: normed hidden <c>[B, T, H]</c> → logits <c>[B, T, V]</c>; null keeps the model's.</param>
public sealed record GenerationTuning(Tensor? Prefix = null, Tensor? DeepPrompts = null, Func<Tensor, Tensor>? Logits = null)
{
    /// <summary>Virtual tokens P.</summary>
    public int PrefixLength => Prefix is null ? 0 : (int)Prefix.shape[0];
}
