using Microsoft.Extensions.AI;
using PetalsSharp.Generation;
using PetalsSharp.Models;

namespace PetalsSharp.Api.Chat;

/// <summary>One generation, resolved from <see cref="ChatOptions"/>: the prompt ids, the generator's options and the Petals knobs.</summary>
/// <param name="PromptIds">The prompt's token ids (BOS included when the tokenizer adds one).</param>
/// <param name="Options">What the <see cref="Generator"/> is given.</param>
/// <param name="ShowRoute">Report the session's server route.</param>
/// <param name="AllowedServers">This request's server allow-list (distributed models), or null.</param>
/// <param name="BlockedServers">This request's server block-list (distributed models), or null.</param>
/// <param name="Adapter">The server-side LoRA adapter this request runs with (distributed models), or null.</param>
/// <param name="Speculative">This request's speculative decoding choice (<see cref="PetalsKeys.Speculative"/>), or null for the engine's default.</param>
public sealed record GenerationRequest(IReadOnlyList<int> PromptIds, GenerationOptions Options, bool ShowRoute = false,
    IReadOnlySet<string>? AllowedServers = null, IReadOnlySet<string>? BlockedServers = null, string? Adapter = null,
    SpeculativeChoice? Speculative = null)
{
    /// <summary>Tokens generated when the caller gives no limit (capped by the model's context).</summary>
    public const int DefaultMaxOutputTokens = 256;

    /// <summary>
    /// Maps <paramref name="chat"/> onto generator options. Temperature 0 means greedy; an unset temperature is 1.0
    /// with sampling, as in OpenAI's API. Frequency and presence penalties are OpenAI's additive ones, over the
    /// generated tokens only. Invalid values throw <see cref="ArgumentException"/>.
    /// </summary>
    public static GenerationRequest Create(CausalLM model, IReadOnlyList<int> promptIds, ChatOptions? chat,
        int defaultMaxOutputTokens = DefaultMaxOutputTokens)
    {
        if (promptIds.Count == 0) throw new ArgumentException("the prompt is empty");
        int context = model.Config.MaxPositionEmbeddings;
        int room = context - promptIds.Count;
        if (room <= 0) throw new PromptTooLongException($"the prompt has {promptIds.Count} tokens, the model's context is {context}");
        int max = chat?.MaxOutputTokens ?? Math.Min(defaultMaxOutputTokens, room);
        if (max < 0) throw new ArgumentOutOfRangeException(nameof(chat), "max_tokens must be >= 0");
        if (max > room)
            throw new ArgumentException($"the prompt ({promptIds.Count} tokens) plus max_tokens ({max}) exceed the model's context of {context} tokens");
        double temperature = chat?.Temperature ?? 1.0;
        if (!(temperature >= 0) || double.IsInfinity(temperature)) throw new ArgumentOutOfRangeException(nameof(chat), "temperature must be a number >= 0");
        var extra = chat?.AdditionalProperties;
        var adapter = Text(extra, PetalsKeys.Adapter) is { Length: > 0 } a ? a : null;
        try { if (adapter is not null) Models.Lora.LoraNames.Check(adapter); }
        catch (Models.Lora.LoraException e) { throw new ArgumentException(e.Message, PetalsKeys.Adapter); }
        var processors = new List<ILogitsProcessor>();
        float frequency = chat?.FrequencyPenalty ?? 0, presence = chat?.PresencePenalty ?? 0;
        if (!float.IsFinite(frequency) || !float.IsFinite(presence)) throw new ArgumentOutOfRangeException(nameof(chat), "penalties must be finite numbers");
        if (frequency != 0 || presence != 0) processors.Add(new AdditivePenalties(promptIds.Count, frequency, presence));
        var options = new GenerationOptions
        {
            MaxNewTokens = max,
            DoSample = temperature > 0,
            Temperature = temperature > 0 ? temperature : 1.0,
            TopP = chat?.TopP ?? 1.0,
            TopK = chat?.TopK ?? 0,
            Seed = chat?.Seed is { } s ? unchecked((int)s ^ (int)(s >> 32)) : null,
            StopStrings = chat?.StopSequences?.Where(x => x.Length > 0).ToList() ?? [],
            RepetitionPenalty = Number(extra, PetalsKeys.RepetitionPenalty) ?? 1.0,
            IgnoreEos = Flag(extra, PetalsKeys.IgnoreEos),
            LogitsProcessors = processors,
        };
        options.Validate(model.Config.NumLayers);
        return new GenerationRequest(promptIds, options, Flag(extra, PetalsKeys.ShowRoute),
            Servers(extra, PetalsKeys.AllowedServers), Servers(extra, PetalsKeys.BlockedServers), adapter,
            SpeculativeChoice.From(extra is not null && extra.TryGetValue(PetalsKeys.Speculative, out var spec) ? spec : null));
    }

    static object? Get(AdditionalPropertiesDictionary? extra, string key) =>
        extra is not null && extra.TryGetValue(key, out var v) ? Unwrap(v) : null;

    // JSON callers hand over JsonElements; everything else passes plain CLR values.
    static object? Unwrap(object? v) => v is System.Text.Json.JsonElement e ? e.ValueKind switch
    {
        System.Text.Json.JsonValueKind.String => e.GetString(),
        System.Text.Json.JsonValueKind.Number => e.GetDouble(),
        System.Text.Json.JsonValueKind.True => true,
        System.Text.Json.JsonValueKind.False => false,
        System.Text.Json.JsonValueKind.Array => e.EnumerateArray().Select(x => x.ToString()).ToArray(),
        _ => null,
    } : v;

    static string? Text(AdditionalPropertiesDictionary? extra, string key) => Get(extra, key) switch
    {
        null => null,
        string s => s,
        var other => throw new ArgumentException($"{key} must be a string, not {other.GetType().Name}"),
    };

    static bool Flag(AdditionalPropertiesDictionary? extra, string key) => Get(extra, key) switch
    {
        null => false,
        bool b => b,
        string s when bool.TryParse(s, out var b) => b,
        var other => throw new ArgumentException($"{key} must be a boolean, not '{other}'"),
    };

    static double? Number(AdditionalPropertiesDictionary? extra, string key) => Get(extra, key) switch
    {
        null => null,
        double d => d,
        float f => f,
        int i => i,
        long l => l,
        string s when double.TryParse(s, System.Globalization.CultureInfo.InvariantCulture, out var d) => d,
        var other => throw new ArgumentException($"{key} must be a number, not '{other}'"),
    };

    static IReadOnlySet<string>? Servers(AdditionalPropertiesDictionary? extra, string key) => Get(extra, key) switch
    {
        null => null,
        string s => s.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).ToHashSet(),
        IEnumerable<string> list => list.ToHashSet(),
        var other => throw new ArgumentException($"{key} must be a list of server addresses or peer ids, not {other.GetType().Name}"),
    };
}

/// <summary>A request's speculative decoding: which draft (<see cref="PromptLookup"/>, <see cref="DraftModel"/> or <see cref="Off"/>) and the starting k.</summary>
public sealed record SpeculativeChoice(string Draft, int Tokens = 4)
{
    public const string PromptLookup = "prompt-lookup", DraftModel = "draft-model", Off = "off";

    /// <summary>Parses <see cref="PetalsKeys.Speculative"/>'s value; null when absent. Bad values throw <see cref="ArgumentException"/>.</summary>
    public static SpeculativeChoice? From(object? value)
    {
        switch (value)
        {
            case null: return null;
            case SpeculativeChoice c: return Checked(c.Draft, c.Tokens);
            case string s:
                var parts = s.Split(':');
                if (parts.Length > 2 || parts.Length == 2 && !int.TryParse(parts[1], out _))
                    throw new ArgumentException($"{PetalsKeys.Speculative} must be DRAFT or DRAFT:K (got '{s}')");
                return Checked(parts[0], parts.Length == 2 ? int.Parse(parts[1]) : 4);
            case System.Text.Json.JsonElement { ValueKind: System.Text.Json.JsonValueKind.String } e: return From(e.GetString());
            case System.Text.Json.JsonElement { ValueKind: System.Text.Json.JsonValueKind.Object } o:
                var draft = o.TryGetProperty("draft", out var d) && d.ValueKind == System.Text.Json.JsonValueKind.String ? d.GetString()!
                    : throw new ArgumentException($"{PetalsKeys.Speculative}.draft must be a string");
                int k = !o.TryGetProperty("tokens", out var t) ? 4
                    : t.ValueKind == System.Text.Json.JsonValueKind.Number && t.TryGetInt32(out var n) ? n
                    : throw new ArgumentException($"{PetalsKeys.Speculative}.tokens must be an integer");
                return Checked(draft, k);
            default: throw new ArgumentException($"{PetalsKeys.Speculative} must be a string or an object, not {value.GetType().Name}");
        }
    }

    static SpeculativeChoice Checked(string draft, int tokens)
    {
        if (draft is not (PromptLookup or DraftModel or Off))
            throw new ArgumentException($"{PetalsKeys.Speculative}: the draft must be {PromptLookup}, {DraftModel} or {Off} (got '{draft}')");
        if (tokens < 1 || tokens > 8) throw new ArgumentException($"{PetalsKeys.Speculative}: tokens must be in [1, 8] (got {tokens})");
        return new SpeculativeChoice(draft, tokens);
    }
}
