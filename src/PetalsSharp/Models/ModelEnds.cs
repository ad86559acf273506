using PetalsSharp.Models.Quant;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PetalsSharp.Models;

/// <summary>RMSNorm (Llama, Mixtral) or LayerNorm with a shift (Falcon, BLOOM); built by <see cref="TensorTable.Norm"/>.</summary>
public sealed class Norm : nn.Module
{
    readonly Parameter weight;   // [H]
    readonly Parameter? bias;    // [H]
    readonly double _eps;
    readonly bool _rms;

    public Norm(Parameter weight, Parameter? bias, double eps, bool rms) : base(rms ? "rms_norm" : "layer_norm")
    {
        this.weight = weight;
        this.bias = bias;
        _eps = eps;
        _rms = rms;
        RegisterComponents();
    }

    internal Tensor Weight => weight;
    internal Tensor? Bias => bias;
    internal double Eps => _eps;
    internal bool IsRms => _rms;

    /// <summary><c>x [..., H]</c> to <c>[..., H]</c>.</summary>
    public Tensor Forward(Tensor x) => _rms ? Ops.RmsNorm(x, weight, _eps) : Ops.LayerNorm(x, weight, bias, _eps);
}

/// <summary>
/// What the client keeps of a model: token embeddings (and BLOOM's embedding norm), the final norm and the
/// LM head. Everything between them is a stack of blocks, local or remote.
/// </summary>
public sealed class ModelEnds : nn.Module
{
    readonly Parameter embed_tokens;   // [V, H], or packed uint8 [V, RowBytes(H)]
    readonly Norm? embed_norm;
    readonly Norm norm;
    readonly Parameter lm_head;        // [V, H] (the embedding matrix itself when tied), or packed

    ModelEnds(ModelConfig config, Parameter embedding, Norm? embeddingNorm, Norm finalNorm, Parameter head, QuantFormat quant) : base("ends")
    {
        Config = config;
        Quant = quant;
        embed_tokens = embedding;
        embed_norm = embeddingNorm;
        norm = finalNorm;
        lm_head = head;
        RegisterComponents();
    }

    /// <summary>
    /// Takes the ends from <paramref name="t"/> by their checkpoint names (<c>lm_head.weight</c> too, unless tied): the
    /// embeddings <c>[V, H]</c>, the optional embedding LayerNorm (BLOOM), the final norm and the LM head.
    /// </summary>
    public static ModelEnds Take(ModelConfig config, TensorTable t, string embedding, string finalNorm, double eps, bool rms,
        string? embeddingNorm = null)
    {
        long v = config.VocabSize, h = config.HiddenSize;
        var embed = t.Take(embedding + ".weight", [v, h], TensorRole.Embedding);               // [V, H]
        var embedNorm = embeddingNorm is null ? null : t.Norm(embeddingNorm, h, eps, rms);     // [H]
        var final = t.Norm(finalNorm, h, eps, rms);                                            // [H]
        var head = config.TieWordEmbeddings ? embed : t.Take("lm_head.weight", [v, h], TensorRole.Matrix); // [V, H]
        if ((embed.dtype == ScalarType.Byte) != (head.dtype == ScalarType.Byte))
            throw new ArgumentException("the embeddings and the LM head are packed together or not at all");
        return new ModelEnds(config, embed, embedNorm, final, head, embed.dtype == ScalarType.Byte ? t.Quant : QuantFormat.None);
    }

    public ModelConfig Config { get; }

    /// <summary>
    /// The block format the embeddings and the LM head are packed in (<see cref="QuantFormat.None"/>: exact).
    /// A Llama-3.1-405B head is 2.1B parameters, so a client's memory is mostly these two.
    /// </summary>
    public QuantFormat Quant { get; }

    /// <summary>Where the ends' tensors live.</summary>
    public Device Device => embed_tokens.device;

    /// <summary>The token embedding matrix <c>[V, H]</c>.</summary>
    public Tensor EmbeddingWeight => embed_tokens;

    /// <summary>The LM head <c>[V, H]</c> (the embedding matrix itself when tied).</summary>
    public Tensor HeadWeight => lm_head;

    /// <summary>Raw token embeddings <c>[B, T, H]</c> in <paramref name="dtype"/>, before any embedding norm.</summary>
    public Tensor EmbedTokens(Tensor inputIds, ScalarType dtype = ScalarType.Float32)
    {
        CheckIds(inputIds);
        var flat = embed_tokens.index_select(0, inputIds.flatten());                  // [B*T, H] (packed: [B*T, RowBytes])
        if (Quant != QuantFormat.None)
        {
            using var rows = flat.contiguous();                                        // [B*T, RowBytes]
            flat = PackedLinear.Dequantize(rows, Quant, Config.HiddenSize, 0, rows.shape[0]);   // [B*T, H]
        }
        return flat.view(inputIds.shape[0], inputIds.shape[1], -1).to(dtype);          // [B, T, H]
    }

    /// <summary>What the first block receives from embeddings (BLOOM applies its embedding LayerNorm here).</summary>
    public Tensor AfterEmbedding(Tensor embeddings) => embed_norm?.Forward(embeddings) ?? embeddings;

    /// <summary>Token ids <c>[B, T]</c> to the first block's input <c>[B, T, H]</c>.</summary>
    public Tensor Embed(Tensor inputIds, ScalarType dtype = ScalarType.Float32) =>
        AfterEmbedding(EmbedTokens(inputIds, dtype));

    public Tensor FinalNorm(Tensor hidden) => norm.Forward(hidden);

    /// <summary>Normed hidden states <c>[B, T, H]</c> to logits <c>[B, T, V]</c>.</summary>
    public Tensor Logits(Tensor normed) => Quant == QuantFormat.None
        ? Ops.Linear(normed, lm_head)
        : PackedLinear.Forward(normed, lm_head, Quant, Config.HiddenSize, null, _headScales.Get(lm_head, Quant, Config.HiddenSize));

    /// <summary>
    /// <see cref="Logits"/> for up to <see cref="Kernels.MatRows.MaxRows"/> rows of different sequences at once, outside
    /// autograd: the head is read once for all of them on the decode kernels (libtorch's GEMM takes several times as
    /// long for a few rows). A client that decodes many sessions batches its heads through this.
    /// </summary>
    public Tensor DecodeLogits(Tensor normed)
    {
        // TryLinear declines rows that need autograd; a packed head already runs on the decode kernels in Logits.
        if (Quant == QuantFormat.None && Kernels.MatRowsLinear.TryLinear(normed, lm_head, null, out var y)) return y;   // [..., V]
        return Logits(normed);
    }

    readonly SideScales _headScales = new();   // the packed head's scales in f32, made on first use

    protected override void Dispose(bool disposing)
    {
        if (disposing) _headScales.Dispose();
        base.Dispose(disposing);
    }

    void CheckIds(Tensor ids)
    {
        if (ids.dim() != 2) throw new ArgumentException($"input ids must be [batch, seq], got rank {ids.dim()}");
        if (ids.dtype != ScalarType.Int64) throw new ArgumentException($"input ids must be int64, got {ids.dtype}");
        if (ids.NumberOfElements == 0) return;
        long min = ids.min().item<long>(), max = ids.max().item<long>();
        if (min < 0 || max >= Config.VocabSize)
            throw new ArgumentOutOfRangeException(nameof(ids), $"token id {(min < 0 ? min : max)} is outside the vocabulary [0, {Config.VocabSize})");
    }
}
