using PetalsSharp.Models.Quant;
using TorchSharp;

namespace PetalsSharp.Models;

/// <summary>
/// One model family (Llama, Mixtral, Falcon, BLOOM, Mistral, Qwen2): how its config reads, which tensors a block and the
/// client-side ends hold, and how to build them. Adding a family means one file that implements this.
/// </summary>
public interface IModelFamily
{
    /// <summary>HF <c>model_type</c> values this family handles.</summary>
    IReadOnlyList<string> ModelTypes { get; }

    ModelConfig ParseConfig(JsonConfigReader reader);

    /// <summary>Every tensor of block <paramref name="index"/>, with its checkpoint name and exact shape.</summary>
    IReadOnlyList<TensorSpec> BlockTensors(ModelConfig config, int index);

    /// <summary>Every tensor the client keeps: embeddings (and their norm), final norm, LM head when untied.</summary>
    IReadOnlyList<TensorSpec> EndTensors(ModelConfig config);

    /// <summary>Builds block <paramref name="index"/> from its tensors, keyed by <see cref="TensorSpec.Name"/>.</summary>
    DecoderBlock CreateBlock(ModelConfig config, int index, IReadOnlyDictionary<string, torch.Tensor> weights, QuantFormat quant = QuantFormat.None);

    ModelEnds CreateEnds(ModelConfig config, IReadOnlyDictionary<string, torch.Tensor> weights, QuantFormat quant = QuantFormat.None);

    /// <summary>A config of the given shape, this family's defaults for everything else (<c>petals create-model</c>).</summary>
    ModelConfig CreateConfig(ModelShape shape);

    /// <summary>The ~100M-parameter config the engine benchmark runs for this family.</summary>
    ModelConfig BenchmarkConfig();
}

/// <summary>
/// The family-independent knobs of a random model. Null sizes take the family's usual ratio to the hidden size;
/// <paramref name="NumKvHeads"/> null means one KV head per query head.
/// </summary>
public sealed record ModelShape(int HiddenSize, int NumLayers, int NumHeads, int? NumKvHeads, int? IntermediateSize,
    int VocabSize, int MaxPositions, bool TieEmbeddings)
{
    /// <summary>Token id used as BOS and EOS of random models: the last one, which GPT-2 files call &lt;|endoftext|&gt;.</summary>
    public int SpecialTokenId => VocabSize - 1;
}

/// <summary>How a tensor is initialised when <c>petals create-model</c> draws random weights.</summary>
public enum TensorRole
{
    /// <summary>Token embeddings: normal with a fixed std.</summary>
    Embedding,
    /// <summary>Linear weight <c>[out, in]</c>: normal with std gain / sqrt(in).</summary>
    Matrix,
    /// <summary>Norm scale: 1 + 0.1·N(0,1).</summary>
    NormScale,
    /// <summary>Bias (also norm shift): 0.1·N(0,1).</summary>
    Bias,
}

/// <summary>A checkpoint tensor: its HF name, the exact shape it must have, and how random init draws it.</summary>
/// <remarks><c>Exact</c>: never quantized, even when the span is (Mixtral's router: a few rows that pick the experts).</remarks>
public sealed record TensorSpec(string Name, long[] Shape, TensorRole Role, double Gain = 1.5, bool Exact = false)
{
    /// <summary>Whether a load with <paramref name="quant"/> stores this tensor packed (block linears and embeddings).</summary>
    public bool QuantizedBy(QuantFormat quant) =>
        quant != QuantFormat.None && !Exact && Shape.Length == 2 && Role is TensorRole.Matrix or TensorRole.Embedding;
}

/// <summary>The families this build knows, looked up by <c>model_type</c>.</summary>
public static class ModelFamilies
{
    static readonly IModelFamily[] All =
        [LlamaFamily.Instance, MixtralFamily.Instance, FalconFamily.Instance, BloomFamily.Instance, MistralFamily.Instance, Qwen2Family.Instance];

    public static IEnumerable<string> Names => All.SelectMany(f => f.ModelTypes);

    /// <summary>One name per family (its first <c>model_type</c>), as <c>--family</c> options take them.</summary>
    public static IEnumerable<string> FamilyNames => All.Select(f => f.ModelTypes[0]);

    public static IModelFamily? Find(string modelType) =>
        All.FirstOrDefault(f => f.ModelTypes.Contains(modelType, StringComparer.Ordinal));
}
