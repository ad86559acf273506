using System.Runtime.CompilerServices;
using Microsoft.Extensions.AI;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Text.Tokenizers;

namespace PetalsSharp.Api.Chat;

/// <summary>A finished generation of one prompt.</summary>
/// <param name="Text">The generated text (stop strings cut off).</param>
/// <param name="FinishReason">Stop (EOS or a stop string) or Length (out of tokens).</param>
/// <param name="PromptTokens">Tokens in the prompt.</param>
/// <param name="CompletionTokens">Tokens generated, an ending EOS included.</param>
/// <param name="Route">The session's route line when <see cref="GenerationRequest.ShowRoute"/> was asked (distributed models).</param>
/// <param name="CachedTokens">Prompt tokens a kept session's cache held already, so they were not sent (OpenAI's <c>cached_tokens</c>).</param>
public sealed record TextCompletion(string Text, ChatFinishReason FinishReason, int PromptTokens, int CompletionTokens, string? Route,
    int CachedTokens = 0);

/// <summary>A prompt longer than the model's context; answered as OpenAI's <c>context_length_exceeded</c>.</summary>
public sealed class PromptTooLongException(string message) : ArgumentException(message);

/// <summary>One streamed piece: new text, and on the last piece the finished generation.</summary>
public sealed record TextUpdate(string Delta, TextCompletion? Final = null);

/// <summary>
/// Runs one prompt through the <see cref="Generator"/> on a model, local or distributed: the one place that turns
/// generator results into finish reasons, token counts and routes for the chat client and the HTTP endpoints.
/// Every call opens its own inference session, so calls may run concurrently.
/// </summary>
public sealed class TextEngine(CausalLM model, string modelId)
{
    public CausalLM Model { get; } = model;
    public string ModelId { get; } = modelId;

    /// <summary>A small local model with the same tokenizer, for requests that ask for <see cref="SpeculativeChoice.DraftModel"/>.</summary>
    public CausalLM? DraftModel { get; set; }

    /// <summary>Speculative decoding for requests that do not choose (<see cref="PetalsKeys.Speculative"/>); null = off.</summary>
    public SpeculativeChoice? DefaultSpeculative { get; set; }

    /// <summary>
    /// Sessions kept between the turns of a chat, so a turn sends only its new tokens; null (the default) opens a new
    /// session per call. Requests with their own server lists, adapter or route report always get a new one.
    /// </summary>
    public ChatSessionCache? Sessions { get; set; }

    /// <summary>The model's tokenizer; text generation needs one.</summary>
    public ITextTokenizer Tokenizer => Model.Tokenizer
        ?? throw new NotSupportedException($"model '{ModelId}' has no tokenizer (tokenizer.json or tokenizer.model), so it cannot take text");

    /// <summary>
    /// Encodes a prompt, refusing text that cannot fit the context before tokenizing it (tokenizing is the costly
    /// part, and a hostile prompt can be megabytes): see <see cref="MaxPromptBytes"/>.
    /// </summary>
    /// <exception cref="PromptTooLongException">The text has more UTF-8 bytes than any prompt that fits.</exception>
    public IReadOnlyList<int> Encode(string text, bool? addBos = null)
    {
        // Every UTF-16 char is at least one UTF-8 byte, so the length alone settles most hostile prompts.
        if (text.Length > MaxPromptBytes || System.Text.Encoding.UTF8.GetByteCount(text) > MaxPromptBytes)
            throw new PromptTooLongException($"the prompt has more than {MaxPromptBytes} bytes of UTF-8, which cannot fit the model's context of {Model.Config.MaxPositionEmbeddings} tokens");
        return Tokenizer.Encode(text, addBos);
    }

    /// <summary>
    /// The most UTF-8 bytes a prompt that fits the context can have. One token covers at most as many input bytes as
    /// its vocabulary string has (sentencepiece's ▁, byte-level's Ġ and byte pieces like &lt;0xE2&gt; are longer than
    /// what they stand for), so a text of B bytes needs at least B / longest tokens. The bound is that times the
    /// context, times 4 for normalizers that shrink text (composing Hangul jamo takes 9 bytes to 3).
    /// </summary>
    public long MaxPromptBytes => _maxPromptBytes ??= ComputeMaxPromptBytes();
    long? _maxPromptBytes;

    long ComputeMaxPromptBytes()
    {
        var tok = Tokenizer;
        int longest = 1;
        for (int id = 0; id < tok.VocabSize; id++)
            if (tok.TokenToString(id) is { } s) longest = Math.Max(longest, System.Text.Encoding.UTF8.GetByteCount(s));
        return 4L * longest * Math.Max(1, Model.Config.MaxPositionEmbeddings);
    }

    /// <summary>Generates the whole completion.</summary>
    public async Task<TextCompletion> GenerateAsync(GenerationRequest request, CancellationToken cancellationToken = default)
    {
        var route = new RouteCapture();
        var options = OptionsFor(request, route);
        await using var draft = options.Speculative?.Draft;
        var kept = Keep(request, options);
        GenerationResult result;
        try
        {
            result = await Model.GenerateAsync([request.PromptIds], options with { Reuse = kept }, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception) when (kept is not null && !cancellationToken.IsCancellationRequested)
        {
            // The kept session's servers are gone (and failover found none): a fresh session, with no error to the user.
            await ChatSessionCache.DiscardAsync(kept);
            kept = null;
            result = await Model.GenerateAsync([request.PromptIds], options, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            if (kept is not null) Sessions!.Return(kept);
        }
        var finish = result.FinishReasons[0] == FinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop;
        return new TextCompletion(result.Texts[0], finish, request.PromptIds.Count, result.NewTokens[0].Count, route.Line, result.CachedTokens);
    }

    /// <summary>A kept session for this request (<see cref="Sessions"/>), or null when it runs on a session of its own.</summary>
    ReusableSession? Keep(GenerationRequest request, GenerationOptions options)
    {
        if (Sessions is null || options.Routing is not null || options.Tuning is not null) return null;
        int extra = options.Speculative is { } spec ? spec.MaxDraftTokens + 1 : 0;
        return Sessions.Take(request.PromptIds, request.PromptIds.Count + request.Options.MaxNewTokens + extra);
    }

    /// <summary>
    /// Streams the completion. Cancelling <paramref name="cancellationToken"/> or abandoning the enumeration stops
    /// generation and disposes the inference session, which closes its streams so servers free its cache at once.
    /// </summary>
    public async IAsyncEnumerable<TextUpdate> StreamAsync(GenerationRequest request,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var route = new RouteCapture();
        var tokens = new List<int>();
        var text = new System.Text.StringBuilder();
        var options = OptionsFor(request, route);
        await using var draft = options.Speculative?.Draft;
        var kept = Keep(request, options);
        // What the generator will skip: the cached prefix, short of the last prompt token (it always runs one).
        int cached = kept is null ? 0 : Math.Min(kept.CommonPrefix(request.PromptIds), request.PromptIds.Count - 1);
        var steps = Model.StreamAsync([request.PromptIds], options with { Reuse = kept }, cancellationToken).GetAsyncEnumerator(cancellationToken);
        bool more;
        try
        {
            // The first step runs the prompt: if a kept session fails there, nothing was shown yet and a fresh one can take over.
            try
            {
                more = await steps.MoveNextAsync();
            }
            catch (Exception) when (kept is not null && !cancellationToken.IsCancellationRequested)
            {
                await steps.DisposeAsync();
                await ChatSessionCache.DiscardAsync(kept);
                kept = null;
                cached = 0;
                steps = Model.StreamAsync([request.PromptIds], options, cancellationToken).GetAsyncEnumerator(cancellationToken);
                more = await steps.MoveNextAsync();
            }
            while (more)
            {
                var step = steps.Current;
                if (step.Tokens[0] is { } token) tokens.Add(token);
                text.Append(step.TextDeltas[0]);
                if (step.TextDeltas[0].Length > 0) yield return new TextUpdate(step.TextDeltas[0]);
                more = await steps.MoveNextAsync();
            }
        }
        finally
        {
            await steps.DisposeAsync();
            if (kept is not null) Sessions!.Return(kept);
        }
        // The generator holds back a trailing half-decoded character while a row runs, and a row that runs out of
        // tokens never flushes it; the non-streamed text has it, so it is sent with the last update.
        var full = FullText(request.Options, tokens);
        var rest = full.Length > text.Length && full.StartsWith(text.ToString(), StringComparison.Ordinal) ? full[text.Length..] : "";
        text.Append(rest);
        var final = new TextCompletion(text.ToString(), StreamFinish(request.Options, tokens), request.PromptIds.Count, tokens.Count, route.Line, cached);
        yield return new TextUpdate(rest, final);
    }

    /// <summary>The generated text as the generator's result has it: decoded, cut before the first stop string.</summary>
    string FullText(GenerationOptions o, List<int> tokens)
    {
        if (Model.Tokenizer is not { } tok) return "";
        var text = tok.Decode(tokens);
        var cut = o.StopStrings.Select(s => text.IndexOf(s, StringComparison.Ordinal)).Where(i => i >= 0).DefaultIfEmpty(-1).Min();
        return cut >= 0 ? text[..cut] : text;
    }

    /// <summary>
    /// A stream only sees tokens, so the finish reason is re-derived as the generator decides it: a generation that
    /// ended early, on EOS, or whose text holds a stop string stopped; otherwise it ran out of tokens.
    /// </summary>
    ChatFinishReason StreamFinish(GenerationOptions o, List<int> tokens)
    {
        if (tokens.Count < o.MaxNewTokens) return ChatFinishReason.Stop;
        var eos = o.IgnoreEos ? [] : o.EosTokenIds ?? Model.Config.EosTokenIds;
        if (tokens.Count > 0 && eos.Contains(tokens[^1])) return ChatFinishReason.Stop;
        if (o.StopStrings.Count > 0 && Model.Tokenizer is { } tok)
        {
            var decoded = tok.Decode(tokens);
            if (o.StopStrings.Any(s => decoded.Contains(s, StringComparison.Ordinal))) return ChatFinishReason.Stop;
        }
        return ChatFinishReason.Length;
    }

    /// <summary>
    /// The generator options with this request's routing: server lists and adapter for its session, and a callback
    /// that keeps the route line when it was asked for. A local model refuses server lists and adapters.
    /// </summary>
    GenerationOptions OptionsFor(GenerationRequest request, RouteCapture route)
    {
        var options = request.Options;
        if (Speculation(request.Speculative ?? DefaultSpeculative) is { } spec) options = options with { Speculative = spec };
        bool filtered = request.AllowedServers is not null || request.BlockedServers is not null || request.Adapter is not null;
        if (!filtered && !request.ShowRoute) return options;
        Action<string>? capture = request.ShowRoute ? line => route.Line = line : null;
        return options with { Routing = new RouteOverrides(request.AllowedServers, request.BlockedServers, capture, request.Adapter) };
    }

    /// <summary>The draft a choice names, fresh for one generation (a draft model's session follows one context).</summary>
    SpeculativeOptions? Speculation(SpeculativeChoice? choice) => choice?.Draft switch
    {
        null or SpeculativeChoice.Off => null,
        SpeculativeChoice.PromptLookup => new SpeculativeOptions(new PromptLookupDraft(), choice.Tokens),
        _ => new SpeculativeOptions(new Generation.DraftModel(DraftModel
            ?? throw new ArgumentException($"{PetalsKeys.Speculative}: this server has no draft model (start it with --draft-model)")), choice.Tokens),
    };

    sealed class RouteCapture
    {
        public string? Line { get; set; }
    }
}
