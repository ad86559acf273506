using PetalsSharp.Models;
using static TorchSharp.torch;

namespace PetalsSharp.Generation;

/// <summary>
/// A small local model with the same tokenizer as the draft source. It keeps one inference session across steps and
/// rolls it back to what the generation accepted, so each proposal costs k small decode steps, not a new prefill.
/// </summary>
/// <remarks>One generation at a time: the session follows one context.</remarks>
public sealed class DraftModel(CausalLM model, bool ownsModel = false) : IDraftSource
{
    readonly List<int> _cached = [];   // tokens in the session's cache, in order
    IBlockSession? _session;
    int _maxLength;

    public CausalLM Model => model;

    public async ValueTask<DraftProposal> ProposeAsync(DraftRequest request, CancellationToken cancellationToken = default)
    {
        var context = request.Context;
        if (request.Count <= 0 || context.Count == 0) return DraftProposal.None;
        if (context.Any(t => t < 0 || t >= model.Config.VocabSize))
            throw new ArgumentException($"the draft model's vocabulary ({model.Config.VocabSize}) does not cover the context: it needs the same tokenizer");
        if (_session is null || request.MaxLength > _maxLength || _session.Position != _cached.Count)
            await RestartAsync(request.MaxLength);

        int common = 0;
        while (common < _cached.Count && common < context.Count && _cached[common] == context[common]) common++;
        if (common == context.Count) common--;   // the last token is fed again: its scores start the proposal
        _cached.RemoveRange(common, _cached.Count - common);

        var tokens = new List<int>();
        var probabilities = new List<double[]>();
        var seq = context.ToList();
        var feed = context.Skip(common).ToArray();
        for (int j = 0; j < request.Count && _cached.Count + feed.Length <= _maxLength; j++)
        {
            using var scores = await NextScoresAsync(feed, cancellationToken);                  // [1, V]
            var (token, probs) = request.Choose(seq, scores);
            tokens.Add(token);
            if (probs is not null) probabilities.Add(probs);
            seq.Add(token);
            feed = [token];
        }
        return new DraftProposal(tokens, probabilities.Count == tokens.Count && tokens.Count > 0 ? probabilities : null);
    }

    async Task RestartAsync(int maxLength)
    {
        if (_session is not null) await _session.DisposeAsync();
        _maxLength = Math.Max(maxLength, 16);
        _session = model.Blocks.OpenSession(new SessionOptions(1, _maxLength));
        _cached.Clear();
    }

    /// <summary>Feeds <paramref name="ids"/> after the cached tokens; the raw scores of the last one, <c>[1, V]</c> float32.</summary>
    async Task<Tensor> NextScoresAsync(int[] ids, CancellationToken ct)
    {
        Tensor embedded;
        using (var scope = NewDisposeScope())
        {
            var t = tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Length], device: model.Ends.EmbeddingWeight.device);  // [1, T]
            embedded = model.Ends.Embed(t).DetachFromDisposeScope();                                                      // [1, T, H]
        }
        int start = _cached.Count;
        Tensor output;
        var options = _session!.Position == start ? null : new StepOptions(StartFromPosition: start);
        using (embedded) output = await _session.StepAsync(embedded, options, ct);                                       // [1, T, H]
        _cached.AddRange(ids);
        using (output)
        using (var scope = NewDisposeScope())
        {
            var last = model.Ends.FinalNorm(output.narrow(1, output.shape[1] - 1, 1));                                  // [1, 1, H]
            return model.Ends.Logits(last).squeeze(1).to(ScalarType.Float32).DetachFromDisposeScope();                   // [1, V]
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_session is not null) await _session.DisposeAsync();
        _session = null;
        if (ownsModel) model.Dispose();
    }
}
