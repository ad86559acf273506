using PetalsSharp.Text.Tokenizers;
using static TorchSharp.torch;

namespace PetalsSharp.Models;

/// <summary>Options for loading a model from a folder.</summary>
/// <param name="WeightDtype">How weights are stored in memory: float32 (default), bfloat16 or float16. Compute stays float32 on CPU.</param>
/// <param name="Device">Where tensors live (CPU by default; a CUDA build of TorchSharp works the same way).</param>
/// <param name="Quant">The block format the blocks' linears are packed in at load (none: exact; quantized weights live on the CPU).</param>
/// <param name="EndsQuant">The block format of the embeddings and the LM head (the client's share of the model).</param>
public sealed record ModelLoadOptions(ScalarType WeightDtype = ScalarType.Float32, Device? Device = null,
    Quant.QuantFormat Quant = PetalsSharp.Models.Quant.QuantFormat.None, Quant.QuantFormat EndsQuant = PetalsSharp.Models.Quant.QuantFormat.None);

/// <summary>Logits and hidden states of one cache-free forward pass.</summary>
/// <param name="Logits"><c>[B, T, V]</c>.</param>
/// <param name="HiddenStates">
/// HF <c>output_hidden_states</c> convention, L+1 entries: 0 is the embedding output, i is block i-1's output,
/// L is the last block's output after the final norm. Entries a distributed stack cannot see are null.
/// </param>
public sealed record InspectResult(Tensor Logits, IReadOnlyList<Tensor?> HiddenStates) : IDisposable
{
    public void Dispose()
    {
        Logits.Dispose();
        foreach (var h in HiddenStates) h?.Dispose();
    }
}

/// <summary>
/// A causal language model: local embeddings, norm and head around a block stack that may be local or
/// remote. Generation, inspection and training all go through this one class.
/// </summary>
public sealed class CausalLM : IDisposable
{
    public CausalLM(ModelConfig config, ModelEnds ends, IBlockStack blocks, ITextTokenizer? tokenizer = null)
    {
        if (blocks.Start != 0 || blocks.End != config.NumLayers)
            throw new ArgumentException($"the block stack covers [{blocks.Start}, {blocks.End}), the model has {config.NumLayers} blocks");
        Config = config;
        Ends = ends;
        Blocks = blocks;
        Tokenizer = tokenizer;
    }

    public ModelConfig Config { get; }
    public ModelEnds Ends { get; }
    public IBlockStack Blocks { get; }
    public ITextTokenizer? Tokenizer { get; }

    /// <summary>Loads every block of a local checkpoint folder (and its tokenizer, when it has one).</summary>
    public static CausalLM Load(string modelDir, ModelLoadOptions? options = null)
    {
        options ??= new ModelLoadOptions();
        using var checkpoint = Checkpoint.Open(modelDir);
        var ends = checkpoint.LoadEnds(options.WeightDtype, options.Device, options.EndsQuant);
        var blocks = checkpoint.LoadBlocks(0, checkpoint.Config.NumLayers, options.WeightDtype, options.Device, quant: options.Quant);
        return new CausalLM(checkpoint.Config, ends, blocks, TokenizerLoader.TryLoad(modelDir));
    }

    /// <summary>Logits <c>[B, T, V]</c> of a cache-free forward over <paramref name="inputIds"/> <c>[B, T]</c>.</summary>
    public Tensor Forward(Tensor inputIds, IReadOnlyList<int>? leftPadding = null)
    {
        using var scope = NewDisposeScope();
        var h = Blocks.Forward(Ends.Embed(inputIds), new ForwardOptions(leftPadding));   // [B, T, H]
        return Ends.Logits(Ends.FinalNorm(h)).MoveToOuterDisposeScope();                 // [B, T, V]
    }

    /// <summary>Logits and every visible hidden state, in HF's <c>output_hidden_states</c> layout.</summary>
    public InspectResult Inspect(Tensor inputIds, IReadOnlyList<int>? leftPadding = null)
    {
        var hidden = new Tensor?[Config.NumLayers + 1];
        using var scope = NewDisposeScope();
        var embedded = Ends.Embed(inputIds);                                               // [B, T, H]
        hidden[0] = embedded.detach().clone().DetachFromDisposeScope();
        var last = Blocks.Forward(embedded, new ForwardOptions(leftPadding, (i, t) =>
        {
            if (i + 1 < Config.NumLayers) hidden[i + 1] = t;
            else t.Dispose();
        }));                                                                               // [B, T, H]
        var normed = Ends.FinalNorm(last);                                                 // [B, T, H]
        hidden[Config.NumLayers] = normed.detach().clone().DetachFromDisposeScope();
        var logits = Ends.Logits(normed).MoveToOuterDisposeScope();                        // [B, T, V]
        return new InspectResult(logits, hidden);
    }

    public void Dispose()
    {
        Blocks.Dispose();
        Ends.Dispose();
    }
}
