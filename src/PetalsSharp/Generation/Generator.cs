using System.Runtime.CompilerServices;
using PetalsSharp.Models;
using static TorchSharp.torch;

namespace PetalsSharp.Generation;

/// <summary>
/// The generation loop over any <see cref="CausalLM"/> (local or distributed): one inference session, a
/// prefill step, then one token per step. Rows of unequal length are left-padded.
/// </summary>
public static class Generator
{
    /// <summary>Generates from text prompts with the model's tokenizer (BOS as its config says).</summary>
    public static Task<GenerationResult> GenerateAsync(this CausalLM model, IReadOnlyList<string> prompts,
        GenerationOptions? options = null, CancellationToken cancellationToken = default) =>
        model.GenerateAsync(Tokenize(model, prompts), options, cancellationToken);

    /// <summary>Generates from token ids, one row per prompt.</summary>
    public static async Task<GenerationResult> GenerateAsync(this CausalLM model, IReadOnlyList<IReadOnlyList<int>> prompts,
        GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        var run = new GenerationRun(model, prompts, options ?? new GenerationOptions());
        await foreach (var _ in run.RunAsync(cancellationToken)) { }
        return run.Result();
    }

    /// <summary>Streams text prompts' generation step by step.</summary>
    public static IAsyncEnumerable<GenerationStep> StreamAsync(this CausalLM model, IReadOnlyList<string> prompts,
        GenerationOptions? options = null, CancellationToken cancellationToken = default) =>
        model.StreamAsync(Tokenize(model, prompts), options, cancellationToken);

    /// <summary>Streams generation step by step: every row's new token and its new text.</summary>
    public static async IAsyncEnumerable<GenerationStep> StreamAsync(this CausalLM model, IReadOnlyList<IReadOnlyList<int>> prompts,
        GenerationOptions? options = null, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var run = new GenerationRun(model, prompts, options ?? new GenerationOptions());
        await foreach (var step in run.RunAsync(cancellationToken)) yield return step;
        run.Result().HiddenStates.Values.ToList().ForEach(t => t.Dispose());
    }

    static IReadOnlyList<IReadOnlyList<int>> Tokenize(CausalLM model, IReadOnlyList<string> prompts)
    {
        var tok = model.Tokenizer ?? throw new InvalidOperationException("this model has no tokenizer; pass token ids instead");
        return prompts.Select(p => (IReadOnlyList<int>)tok.Encode(p).ToArray()).ToList();
    }
}

/// <summary>State of one generation: sequences, finished rows, emitted text and captured hidden states.</summary>
internal sealed partial class GenerationRun
{
    readonly CausalLM _model;
    readonly GenerationOptions _o;
    readonly List<int>[] _seqs;
    readonly List<int>[] _new;
    readonly FinishReason?[] _finished;
    readonly int[] _emitted;
    readonly string[] _texts;
    readonly int[] _leftPad;
    readonly int _promptLength;
    readonly HashSet<int> _eos;
    readonly ITokenSampler _sampler;
    readonly Dictionary<int, List<Tensor>> _hidden = new();
    int _cachedTokens;

    public GenerationRun(CausalLM model, IReadOnlyList<IReadOnlyList<int>> prompts, GenerationOptions options)
    {
        if (prompts.Count == 0) throw new ArgumentException("no prompts to generate from");
        if (prompts.Any(p => p.Count == 0)) throw new ArgumentException("every prompt needs at least one token");
        options.Validate(model.Config.NumLayers);
        _model = model;
        _o = options;
        _seqs = prompts.Select(p => p.ToList()).ToArray();
        _new = prompts.Select(_ => new List<int>()).ToArray();
        _finished = new FinishReason?[prompts.Count];
        _emitted = new int[prompts.Count];
        _texts = prompts.Select(_ => "").ToArray();
        _promptLength = prompts.Max(p => p.Count);
        _leftPad = prompts.Select(p => _promptLength - p.Count).ToArray();
        _eos = options.IgnoreEos ? [] : (options.EosTokenIds ?? model.Config.EosTokenIds).ToHashSet();
        _sampler = options.Sampler ?? (options.DoSample ? new MultinomialSampler(options.Seed) : new GreedySampler());
        foreach (var l in options.HiddenStateLayers) _hidden[l] = [];
    }

    int Batch => _seqs.Length;
    int PadId => _model.Config.PadTokenId ?? _model.Config.EosTokenIds.FirstOrDefault();

    public IAsyncEnumerable<GenerationStep> RunAsync(CancellationToken ct) =>
        _o.NumBeams > 1 ? RunBeamAsync(ct) : _o.Speculative is null ? RunPlainAsync(ct) : RunSpeculativeAsync(_o.Speculative, ct);

    async IAsyncEnumerable<GenerationStep> RunPlainAsync([EnumeratorCancellation] CancellationToken ct)
    {
        if (_o.MaxNewTokens == 0) yield break;
        var tuning = _o.Tuning;
        int prefix = tuning?.PrefixLength ?? 0;
        if (tuning?.DeepPrompts is not null && (prefix == 0 || _leftPad.Any(p => p > 0)))
            throw new NotSupportedException(prefix == 0 ? "deep prompts need the prefix embeddings too"
                : "deep prompts with prompts of unequal lengths (left padding) are not supported; generate them one at a time");
        var (session, start) = OpenOrReuse(prefix + _promptLength + _o.MaxNewTokens);
        await using var _ = _o.Reuse is null ? session : null;
        var input = new long[Batch * _promptLength];
        for (int b = 0; b < Batch; b++)
            for (int t = 0; t < _seqs[b].Count; t++) input[b * _promptLength + _leftPad[b] + t] = _seqs[b][t];
        var rowsIn = start == 0 ? input : input[start..];
        int width = _promptLength - start, fed = start;
        for (int step = 0; step < _o.MaxNewTokens; step++)
        {
            ct.ThrowIfCancellationRequested();
            // Dispose scopes are per thread and a remote step resumes on another one, so no scope spans the await:
            // tensors crossing it are owned explicitly and disposed here.
            Tensor embedded;
            using (var scope = NewDisposeScope())
            {
                var ids = tensor(rowsIn, [Batch, width], device: _model.Ends.EmbeddingWeight.device);     // [B, T]
                embedded = step == 0 && prefix > 0
                    ? _model.Ends.AfterEmbedding(WithPrefix(_model.Ends.EmbedTokens(ids), tuning!.Prefix!))   // [B, P+T, H]
                    : _model.Ends.Embed(ids);                                                          // [B, T, H]
                Capture(0, embedded);
                embedded.DetachFromDisposeScope();
            }
            Tensor output;
            var stepOptions = new StepOptions(OnBlockOutput: Sink(), Prompts: step == 0 ? tuning?.DeepPrompts : null,
                StartFromPosition: step == 0 && session.Position != start ? start : null);
            using (embedded) output = await StepReusedAsync(session, embedded, stepOptions, ct);          // [B, T, H]
            fed += width;
            _o.Reuse?.Holds(_seqs[0].Take(fed));
            int[] next;
            using (output)
            using (var scope = NewDisposeScope())
                next = _sampler.Sample(NextScores(output));                                            // from [B, V]
            var tokens = new int?[Batch];
            var deltas = new string[Batch];
            for (int b = 0; b < Batch; b++)
            {
                deltas[b] = "";
                if (_finished[b] is not null) continue;
                tokens[b] = next[b];
                Accept(b, next[b], step, out deltas[b]);
            }
            yield return new GenerationStep(step, tokens, deltas);
            if (_finished.All(f => f is not null)) break;
            rowsIn = next.Select((t, b) => (long)(_finished[b] is null ? t : PadId)).ToArray();
            width = 1;
        }
    }

    /// <summary>
    /// A new session of <paramref name="maxLength"/>, or the <see cref="GenerationOptions.Reuse"/>d one and how much of
    /// the prompt its cache holds (at least one prompt token is always run: its scores pick the first new token).
    /// </summary>
    (IBlockSession Session, int Start) OpenOrReuse(int maxLength)
    {
        if (_o.Reuse is not { } reuse)
            return (_model.Blocks.OpenSession(new SessionOptions(Batch, maxLength, _leftPad.Any(p => p > 0) ? _leftPad : null)
            { Routing = _o.Routing }), 0);
        if (Batch != 1 || _o.Tuning is not null || _hidden.Count > 0)
            throw new NotSupportedException("a reused session takes one prompt, without tuning or hidden states");
        if (maxLength > reuse.MaxLength)
            throw new ArgumentException($"the generation needs {maxLength} positions, the reused session holds {reuse.MaxLength}");
        int start = Math.Min(reuse.CommonPrefix(_seqs[0]), _seqs[0].Count - 1);
        _cachedTokens = start;
        return (reuse.Session, start);
    }

    /// <summary>A step; on a reused session a failure also forgets what its cache held, which can no longer be trusted.</summary>
    async ValueTask<Tensor> StepReusedAsync(IBlockSession session, Tensor hidden, StepOptions options, CancellationToken ct)
    {
        try
        {
            return await session.StepAsync(hidden, options, ct);
        }
        catch
        {
            _o.Reuse?.Forget();
            throw;
        }
    }

    /// <summary>Token embeddings <c>[B, T, H]</c> with the virtual tokens <c>[P, H]</c> after each row's left padding.</summary>
    Tensor WithPrefix(Tensor embedded, Tensor prefix)
    {
        var p = prefix.to(embedded.dtype).unsqueeze(0);                                          // [1, P, H]
        var rows = new List<Tensor>();
        for (int b = 0; b < Batch; b++)
        {
            var row = embedded.narrow(0, b, 1);                                                  // [1, T, H]
            int pad = _leftPad[b];
            rows.Add(cat([row.narrow(1, 0, pad), p, row.narrow(1, pad, row.shape[1] - pad)], 1)); // [1, P+T, H]
        }
        return cat(rows, 0);                                                                     // [B, P+T, H]
    }

    Action<int, Tensor>? Sink() => _hidden.Count == 0 ? null : (i, t) =>
    {
        if (i + 1 < _model.Config.NumLayers && _hidden.TryGetValue(i + 1, out var list)) list.Add(t);
        else t.Dispose();
    };

    /// <summary>Scores of the next token <c>[B, V]</c> from the last block's output <c>[B, T, H]</c>.</summary>
    Tensor NextScores(Tensor output)
    {
        var ends = _model.Ends;
        var L = _model.Config.NumLayers;
        Tensor lastNormed;
        if (_hidden.ContainsKey(L))
        {
            var normed = ends.FinalNorm(output);                                                  // [B, T, H]
            Capture(L, normed);
            lastNormed = normed.narrow(1, normed.shape[1] - 1, 1);                                // [B, 1, H]
        }
        else lastNormed = ends.FinalNorm(output.narrow(1, output.shape[1] - 1, 1));              // [B, 1, H]
        var head = _o.Tuning?.Logits ?? ends.Logits;
        var scores = head(lastNormed).squeeze(1).to(ScalarType.Float32);                         // [B, V]
        return Process(scores);
    }

    void Capture(int layer, Tensor t)
    {
        if (_hidden.TryGetValue(layer, out var list)) list.Add(t.detach().clone().DetachFromDisposeScope());
    }

    /// <summary>The processors and warpers over scores <c>[B, V]</c>; <paramref name="sequences"/> (one per row) default to the rows'.</summary>
    Tensor Process(Tensor scores, IReadOnlyList<IReadOnlyList<int>>? sequences = null)
    {
        IReadOnlyList<IReadOnlyList<int>> seqs = sequences ?? _seqs;
        if (_o.RepetitionPenalty != 1.0) scores = Sampling.RepetitionPenalty(seqs, scores, _o.RepetitionPenalty);
        foreach (var p in _o.LogitsProcessors) scores = p.Process(seqs, scores);
        if (!_o.DoSample) return scores;
        if (_o.Temperature != 1.0) scores = scores / _o.Temperature;
        scores = Sampling.TopK(scores, _o.TopK);
        return Sampling.TopP(scores, _o.TopP);
    }

    void Accept(int b, int token, int step, out string delta)
    {
        _seqs[b].Add(token);
        _new[b].Add(token);
        delta = "";
        if (_eos.Contains(token)) _finished[b] = FinishReason.EndOfSequence;
        if (_model.Tokenizer is { } tok)
        {
            var text = tok.Decode(_new[b]);
            var cut = _o.StopStrings.Select(s => text.IndexOf(s, StringComparison.Ordinal)).Where(i => i >= 0).DefaultIfEmpty(-1).Min();
            if (cut >= 0)
            {
                text = text[..cut];
                _finished[b] = FinishReason.StopString;
            }
            _texts[b] = text;
            var safe = _finished[b] is not null ? text.Length : SafeLength(text);
            if (safe > _emitted[b])
            {
                delta = text[_emitted[b]..safe];
                _emitted[b] = safe;
            }
        }
        if (_finished[b] is null && step + 1 >= _o.MaxNewTokens) _finished[b] = FinishReason.Length;
    }

    /// <summary>How much text can be shown: not a half-decoded character, not the start of a stop string.</summary>
    int SafeLength(string text)
    {
        int safe = text.Length;
        while (safe > 0 && text[safe - 1] == '\uFFFD') safe--;
        foreach (var stop in _o.StopStrings)
            for (int k = Math.Min(stop.Length - 1, safe); k > 0; k--)
                if (string.CompareOrdinal(text, safe - k, stop, 0, k) == 0) { safe -= k; break; }
        return safe;
    }

    public GenerationResult Result()
    {
        var hidden = _hidden.ToDictionary(kv => kv.Key, kv =>
        {
            var t = kv.Value.Count == 0 ? empty(0) : cat(kv.Value, 1);
            foreach (var x in kv.Value) x.Dispose();
            kv.Value.Clear();
            return t;
        });
        return new GenerationResult(_seqs.Select(s => (IReadOnlyList<int>)s).ToList(), _new.Select(s => (IReadOnlyList<int>)s).ToList(),
            _texts, _finished.Select(f => f ?? FinishReason.Length).ToList(), hidden)
        { Speculation = _speculation, CachedTokens = _cachedTokens };
    }
}
