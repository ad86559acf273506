using PetalsSharp.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PetalsSharp.Training;

/// <summary>How a sequence's hidden states become one vector.</summary>
public enum Pooling
{
    /// <summary>The last non-pad token of each row (HF's <c>*ForSequenceClassification</c>).</summary>
    LastToken,

    /// <summary>The mean over each row's non-pad tokens.</summary>
    Mean,
}

/// <summary>
/// A trainable classification head over a (local or distributed) model's final-normed hidden states: pooled
/// <c>[B, H]</c> → <c>score</c> → <c>[B, labels]</c>, as HF's <c>score</c> layer (no bias). Rows are right-padded;
/// <c>lengths</c> gives each row's real tokens.
/// </summary>
public sealed class SequenceClassifier : nn.Module
{
    readonly Linear score;   // weight [labels, H]

    public SequenceClassifier(CausalLM model, int numLabels, Pooling pooling = Pooling.LastToken, long seed = 0) : base("classifier")
    {
        if (numLabels < 1) throw new ArgumentOutOfRangeException(nameof(numLabels), "at least one label");
        Model = model;
        Pooling = pooling;
        using (var _ = no_grad())
        {
            score = nn.Linear(model.Config.HiddenSize, numLabels, hasBias: false);
            SeededInit.KaimingUniform(score.weight!, seed);
        }
        RegisterComponents();
    }

    public CausalLM Model { get; }
    public Pooling Pooling { get; }

    /// <summary>The head's weight <c>[labels, H]</c>.</summary>
    public Parameter Weight => score.weight!;

    /// <summary>Class logits <c>[B, labels]</c> of right-padded <paramref name="inputIds"/> <c>[B, T]</c>.</summary>
    /// <param name="inputIds">Token ids <c>[B, T]</c>, right-padded.</param>
    /// <param name="lengths">Real tokens per row (null: all T).</param>
    public Tensor Forward(Tensor inputIds, IReadOnlyList<int>? lengths = null)
    {
        var ends = Model.Ends;
        var hidden = ends.FinalNorm(Model.Blocks.Forward(ends.Embed(inputIds)));                  // [B, T, H]
        return score.forward(Pool(hidden, lengths));                                              // [B, labels]
    }

    /// <summary>Hidden states <c>[B, T, H]</c> → <c>[B, H]</c>.</summary>
    public Tensor Pool(Tensor hidden, IReadOnlyList<int>? lengths)
    {
        long b = hidden.shape[0], t = hidden.shape[1];
        var len = lengths?.Select(l => l < 1 || l > t ? throw new ArgumentOutOfRangeException(nameof(lengths), $"row length {l} is outside [1, {t}]") : (long)l).ToArray()
                  ?? Enumerable.Repeat(t, (int)b).ToArray();
        if (len.Length != b) throw new ArgumentException($"{len.Length} lengths for {b} rows");
        if (Pooling == Pooling.LastToken)
        {
            var last = tensor(len.Select(l => l - 1).ToArray(), device: hidden.device);          // [B]
            var index = last.view(b, 1, 1).expand(b, 1, hidden.shape[2]);                        // [B, 1, H]
            return hidden.gather(1, index).squeeze(1);                                           // [B, H]
        }
        var mask = arange(t, device: hidden.device).unsqueeze(0)
            .lt(tensor(len, device: hidden.device).unsqueeze(1)).to(hidden.dtype);               // [B, T]
        var sum = (hidden * mask.unsqueeze(2)).sum(1);                                           // [B, H]
        return sum / mask.sum(1, keepdim: true);                                                 // [B, H]
    }
}
