using PetalsSharp.Models;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// The fused path's rotary tables follow every rope scaling of the reference: linear, dynamic NTK (which changes with
/// the total length, so the script runs past max_position_embeddings) and Llama 3.1's frequency bands, with GQA and
/// left padding.
/// </summary>
public sealed class FusedRopeTests
{
    [Theory]
    [InlineData(null)]
    [InlineData("linear")]
    [InlineData("dynamic")]
    [InlineData("llama3")]
    public void Every_rope_scaling_matches_the_reference(string? type)
    {
        var config = new LlamaConfig
        {
            ModelType = "llama", VocabSize = 64, HiddenSize = 96, NumLayers = 2, NumHeads = 6, NumKvHeads = 2,
            HeadDim = 16, IntermediateSize = 160, RmsNormEps = 1e-5, EosTokenIds = [63], MaxPositionEmbeddings = 8,
            RopeScaling = type switch
            {
                null => null,
                "llama3" => new RopeScaling("llama3", 4.0, 1.0, 4.0, OriginalMaxPositionEmbeddings: 4),
                _ => new RopeScaling(type, 2.0),
            },
        };
        FusedParity.OnRandomCheckpoint(config, seed: 9, dir => FusedParity.RunScript(dir, ScalarType.Float32, leftPadding: [3, 0]));
    }
}
