using PetalsSharp.Generation;
using static TorchSharp.torch;

namespace PetalsSharp.Api.Chat;

/// <summary>
/// OpenAI's frequency and presence penalties: each generated token's score drops by
/// <c>count · frequency + (count &gt; 0) · presence</c>, counting only tokens after the prompt.
/// </summary>
internal sealed class AdditivePenalties(int promptLength, float frequency, float presence) : ILogitsProcessor
{
    public Tensor Process(IReadOnlyList<IReadOnlyList<int>> sequences, Tensor scores)
    {
        long rows = scores.shape[0], vocab = scores.shape[1];
        var counts = new float[rows * vocab];
        for (int b = 0; b < rows; b++)
            for (int t = promptLength; t < sequences[b].Count; t++)
            {
                var id = sequences[b][t];
                if (id >= 0 && id < vocab) counts[b * vocab + id]++;
            }
        var c = tensor(counts, [rows, vocab], device: scores.device);                          // [B, V]
        return scores - c * frequency - c.gt(0).to(ScalarType.Float32) * presence;             // [B, V]
    }
}
