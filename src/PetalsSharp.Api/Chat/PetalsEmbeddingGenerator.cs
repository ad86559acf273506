using Microsoft.Extensions.AI;
using PetalsSharp.Models;
using static TorchSharp.torch;

namespace PetalsSharp.Api.Chat;

/// <summary>
/// <see cref="IEmbeddingGenerator{TInput, TEmbedding}"/> over a <see cref="CausalLM"/> (local or distributed):
/// each text's embedding is the mean of the final hidden states (after the final norm, HF's
/// <c>last_hidden_state</c>) over its tokens, padding excluded. One cache-free forward per batch of inputs.
/// </summary>
public sealed class PetalsEmbeddingGenerator : IEmbeddingGenerator<string, Embedding<float>>
{
    readonly CausalLM _model;
    readonly bool _ownsModel;

    public PetalsEmbeddingGenerator(CausalLM model, string modelId, bool ownsModel = false)
    {
        _model = model;
        _ownsModel = ownsModel;
        ModelId = modelId;
        Metadata = new EmbeddingGeneratorMetadata("petals", null, modelId, model.Config.HiddenSize);
    }

    /// <summary>Padded tokens (rows × longest row) in one forward: well below a server's default 16384 per request.</summary>
    public const int BatchTokens = 4096;

    /// <summary>Tokens one call may embed in all (OpenAI's own limit is of this order).</summary>
    public const long MaxTotalTokens = 300_000;

    public string ModelId { get; }
    public EmbeddingGeneratorMetadata Metadata { get; }

    public Task<GeneratedEmbeddings<Embedding<float>>> GenerateAsync(IEnumerable<string> values,
        EmbeddingGenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        var tok = _model.Tokenizer ?? throw new NotSupportedException($"model '{ModelId}' has no tokenizer, so it cannot embed text");
        return GenerateAsync(values.Select(v => tok.Encode(v)).ToList(), cancellationToken);
    }

    /// <summary>Embeds token-id rows (what <c>/v1/embeddings</c> accepts besides text); ids must be in the vocabulary.</summary>
    public async Task<GeneratedEmbeddings<Embedding<float>>> GenerateAsync(IReadOnlyList<IReadOnlyList<int>> rows,
        CancellationToken cancellationToken = default)
    {
        if (rows.Any(r => r.Count == 0)) throw new ArgumentException("every input needs at least one token");
        if (rows.Any(r => r.Count > _model.Config.MaxPositionEmbeddings))
            throw new ArgumentException($"an input is longer than the model's context of {_model.Config.MaxPositionEmbeddings} tokens");
        int vocab = _model.Config.VocabSize;
        if (rows.Any(r => r.Any(id => id < 0 || id >= vocab)))
            throw new ArgumentException($"token ids must be in [0, {vocab})");
        long total = rows.Sum(r => (long)r.Count);
        if (total > MaxTotalTokens) throw new ArgumentException($"the inputs have {total} tokens; at most {MaxTotalTokens} per request");
        var result = new GeneratedEmbeddings<Embedding<float>>();
        if (rows.Count == 0) return result;
        var vectors = new float[rows.Count][];
        var now = DateTimeOffset.UtcNow;
        // Similar lengths go together, and each forward stays within a token budget far below a server's per-request
        // limit, so one large request neither trips that limit nor holds a huge padded batch in memory.
        var order = Enumerable.Range(0, rows.Count).OrderBy(i => rows[i].Count).ToList();
        for (int at = 0; at < order.Count;)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int take = 1;
            while (at + take < order.Count && (long)(take + 1) * rows[order[at + take]].Count <= BatchTokens) take++;
            var ids = order.GetRange(at, take);
            // The stack's forward is synchronous (a distributed one blocks on the servers): keep it off the caller's thread.
            var pooled = await Task.Run(() => Pool(ids.Select(i => rows[i]).ToList()), cancellationToken).ConfigureAwait(false);
            for (int j = 0; j < take; j++) vectors[ids[j]] = pooled[j];
            at += take;
        }
        foreach (var v in vectors) result.Add(new Embedding<float>(v) { ModelId = ModelId, CreatedAt = now });
        result.Usage = new UsageDetails { InputTokenCount = total, TotalTokenCount = total };
        return result;
    }

    float[][] Pool(IReadOnlyList<IReadOnlyList<int>> rows)
    {
        int batch = rows.Count, width = rows.Max(r => r.Count), hiddenSize = _model.Config.HiddenSize;
        int pad = _model.Config.PadTokenId ?? _model.Config.EosTokenIds.FirstOrDefault();
        var ids = new long[batch * width];
        var mask = new float[batch * width];
        var leftPad = rows.Select(r => width - r.Count).ToArray();
        for (int b = 0; b < batch; b++)
            for (int t = 0; t < width; t++)
            {
                bool real = t >= leftPad[b];
                ids[b * width + t] = real ? rows[b][t - leftPad[b]] : pad;
                mask[b * width + t] = real ? 1 : 0;
            }
        using var scope = NewDisposeScope();
        var device = _model.Ends.EmbeddingWeight.device;
        var input = tensor(ids, [batch, width], device: device);                                     // [B, T]
        var m = tensor(mask, [batch, width, 1], device: device);                                     // [B, T, 1]
        using var noGrad = no_grad();
        var h = _model.Blocks.Forward(_model.Ends.Embed(input), new ForwardOptions(leftPad.Any(p => p > 0) ? leftPad : null));  // [B, T, H]
        var normed = _model.Ends.FinalNorm(h).to(ScalarType.Float32);                                 // [B, T, H]
        var mean = (normed * m).sum(1) / m.sum(1);                                                   // [B, H]
        var flat = mean.cpu().data<float>().ToArray();
        return Enumerable.Range(0, batch).Select(b => flat.AsSpan(b * hiddenSize, hiddenSize).ToArray()).ToArray();
    }

    public object? GetService(Type serviceType, object? serviceKey = null) =>
        serviceKey is not null ? null
        : serviceType == typeof(EmbeddingGeneratorMetadata) ? Metadata
        : serviceType.IsInstanceOfType(this) ? this
        : null;

    public void Dispose()
    {
        if (_ownsModel) _model.Dispose();
    }
}
