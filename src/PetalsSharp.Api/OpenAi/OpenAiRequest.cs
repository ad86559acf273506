using System.Text.Json;
using Microsoft.Extensions.AI;

namespace PetalsSharp.Api.OpenAi;

/// <summary>
/// The fields of a completions or chat completions body that PetalsSharp honors, checked one by one: a wrong type
/// or value is a 400 naming the field. Fields it does not know are ignored, as most OpenAI-compatible servers do.
/// </summary>
internal sealed class OpenAiRequest
{
    readonly JsonElement _root;

    OpenAiRequest(JsonElement root) => _root = root;

    public static async Task<OpenAiRequest> ReadAsync(Stream body, CancellationToken ct)
    {
        JsonDocument doc;
        try { doc = await JsonDocument.ParseAsync(body, cancellationToken: ct); }
        catch (JsonException e) { throw OpenAiError.Invalid($"the request body is not valid JSON: {e.Message}"); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw OpenAiError.Invalid("the request body must be a JSON object");
            CheckText(doc.RootElement, "");
            return new OpenAiRequest(doc.RootElement.Clone());
        }
    }

    /// <summary>
    /// The parser leaves strings undecoded, so invalid UTF-8 or an unpaired surrogate escape (<c>"\ud800"</c>) would
    /// only throw where a field is read, as a 500. Every name and string is decoded once here, to answer 400 instead.
    /// </summary>
    static void CheckText(JsonElement e, string at)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.String:
                try { e.GetString(); }
                catch (InvalidOperationException) { throw OpenAiError.Invalid($"{(at.Length == 0 ? "a string" : at)} is not valid text: invalid UTF-8 or an unpaired surrogate", at.Length == 0 ? null : at); }
                break;
            case JsonValueKind.Array:
                int i = 0;
                foreach (var item in e.EnumerateArray()) CheckText(item, $"{at}[{i++}]");
                break;
            case JsonValueKind.Object:
                foreach (var p in e.EnumerateObject())
                {
                    string name;
                    try { name = p.Name; }
                    catch (InvalidOperationException) { throw OpenAiError.Invalid("a field name is not valid text: invalid UTF-8 or an unpaired surrogate"); }
                    CheckText(p.Value, at.Length == 0 ? name : $"{at}.{name}");
                }
                break;
        }
    }

    /// <summary>A field of the body, null when absent or JSON null (also for endpoints with fields of their own).</summary>
    public JsonElement? Get(string name) =>
        _root.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    public string Model => Get("model") is { ValueKind: JsonValueKind.String } m ? m.GetString()!
        : throw OpenAiError.Invalid(Get("model") is null ? "you must provide a model parameter" : "model must be a string", "model");

    public bool Stream => Bool("stream") ?? false;
    public bool IncludeUsage => Get("stream_options") is { ValueKind: JsonValueKind.Object } o
        && o.TryGetProperty("include_usage", out var u) && u.ValueKind == JsonValueKind.True;
    public bool Echo => Bool("echo") ?? false;

    bool? Bool(string name) => Get(name) switch
    {
        null => null,
        { ValueKind: JsonValueKind.True } => true,
        { ValueKind: JsonValueKind.False } => false,
        _ => throw OpenAiError.Invalid($"{name} must be a boolean", name),
    };

    double? Number(string name, double min, double max)
    {
        if (Get(name) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number) throw OpenAiError.Invalid($"{name} must be a number", name);
        var d = v.GetDouble();
        if (d < min || d > max) throw OpenAiError.Invalid($"{name} must be in [{min}, {max}] (got {d})", name, "invalid_value");
        return d;
    }

    long? Integer(string name, long min, long max)
    {
        if (Get(name) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out var i)) throw OpenAiError.Invalid($"{name} must be an integer", name);
        if (i < min || i > max) throw OpenAiError.Invalid($"{name} must be in [{min}, {max}] (got {i})", name, "invalid_value");
        return i;
    }

    /// <summary>
    /// Everything that says how to generate. <paramref name="defaultMaxTokens"/> is OpenAI's default for the
    /// endpoint (16 for completions; chat has none, so the model's room).
    /// </summary>
    public ChatOptions Options(int? defaultMaxTokens)
    {
        if (Integer("n", 1, 128) is > 1) throw OpenAiError.Invalid("only n=1 is supported", "n", "unsupported_value");
        if (Integer("best_of", 1, 128) is > 1) throw OpenAiError.Invalid("only best_of=1 is supported", "best_of", "unsupported_value");
        foreach (var name in new[] { "logprobs", "top_logprobs", "suffix", "tools", "functions", "logit_bias" })
            if (Get(name) is { } v && v.ValueKind is not JsonValueKind.False)
                throw OpenAiError.Invalid($"{name} is not supported", name, "unsupported_parameter");
        var max = Integer("max_completion_tokens", 0, int.MaxValue) ?? Integer("max_tokens", 0, int.MaxValue) ?? defaultMaxTokens;
        var options = new ChatOptions
        {
            Temperature = (float?)Number("temperature", 0, 2),
            TopP = (float?)Number("top_p", 0, 1),
            TopK = (int?)Integer("top_k", 0, int.MaxValue),
            MaxOutputTokens = (int?)max,
            Seed = Integer("seed", long.MinValue, long.MaxValue),
            FrequencyPenalty = (float?)Number("frequency_penalty", -2, 2),
            PresencePenalty = (float?)Number("presence_penalty", -2, 2),
            StopSequences = Stop(),
        };
        if (Number("repetition_penalty", 0, 100) is { } rp)
            (options.AdditionalProperties ??= [])[Chat.PetalsKeys.RepetitionPenalty] = rp;
        PetalsExtensions(options);
        return options;
    }

    /// <summary>Body field <c>petals</c>: the swarm knobs an <c>IChatClient</c> caller sets in AdditionalProperties.</summary>
    static readonly Dictionary<string, string> PetalsFields = new()
    {
        ["adapter"] = Chat.PetalsKeys.Adapter,
        ["allowed_servers"] = Chat.PetalsKeys.AllowedServers,
        ["blocked_servers"] = Chat.PetalsKeys.BlockedServers,
        ["show_route"] = Chat.PetalsKeys.ShowRoute,
        ["ignore_eos"] = Chat.PetalsKeys.IgnoreEos,
        ["speculative"] = Chat.PetalsKeys.Speculative,
    };

    void PetalsExtensions(ChatOptions options)
    {
        if (Get("petals") is not { } petals) return;
        if (petals.ValueKind != JsonValueKind.Object) throw OpenAiError.Invalid("petals must be an object", "petals");
        foreach (var field in petals.EnumerateObject())
        {
            if (!PetalsFields.TryGetValue(field.Name, out var key))
                throw OpenAiError.Invalid($"petals.{field.Name} is not a PetalsSharp option ({string.Join(", ", PetalsFields.Keys)})",
                    $"petals.{field.Name}", "unsupported_parameter");
            var value = field.Value;
            // An allow-list that silently became "no restriction" would send the prompt anywhere: check every type here.
            bool ok = field.Name switch
            {
                "adapter" => value.ValueKind == JsonValueKind.String,
                "show_route" or "ignore_eos" => value.ValueKind is JsonValueKind.True or JsonValueKind.False,
                "speculative" => value.ValueKind is JsonValueKind.String or JsonValueKind.Object,
                _ => value.ValueKind == JsonValueKind.String
                    || value.ValueKind == JsonValueKind.Array && value.EnumerateArray().All(x => x.ValueKind == JsonValueKind.String),
            };
            if (!ok)
                throw OpenAiError.Invalid($"petals.{field.Name} must be {(field.Name switch { "adapter" => "a string", "show_route" or "ignore_eos" => "a boolean", "speculative" => "a string or an object", _ => "a list of server addresses or peer ids" })}",
                    $"petals.{field.Name}");
            (options.AdditionalProperties ??= [])[key] = value.Clone();
        }
    }

    List<string>? Stop() => Get("stop") switch
    {
        null => null,
        { ValueKind: JsonValueKind.String } s => [s.GetString()!],
        { ValueKind: JsonValueKind.Array } a when a.GetArrayLength() <= 4 && a.EnumerateArray().All(x => x.ValueKind == JsonValueKind.String)
            => a.EnumerateArray().Select(x => x.GetString()!).ToList(),
        _ => throw OpenAiError.Invalid("stop must be a string or an array of up to 4 strings", "stop"),
    };

    /// <summary>A completions prompt: one string, or one array of token ids (one prompt only, since n = 1 and no batching).</summary>
    public (string? Text, IReadOnlyList<int>? Ids) Prompt()
    {
        switch (Get("prompt"))
        {
            case null: throw OpenAiError.Invalid("you must provide a prompt", "prompt");
            case { ValueKind: JsonValueKind.String } s: return (s.GetString()!, null);
            case { ValueKind: JsonValueKind.Array } a when a.GetArrayLength() == 1 && a[0].ValueKind == JsonValueKind.String:
                return (a[0].GetString()!, null);
            case { ValueKind: JsonValueKind.Array } a when a.GetArrayLength() > 0 && a.EnumerateArray().All(x => x.ValueKind == JsonValueKind.Number):
                return (null, a.EnumerateArray().Select(x => x.TryGetInt32(out var i) && i >= 0 ? i
                    : throw OpenAiError.Invalid("prompt token ids must be non-negative integers", "prompt")).ToList());
            default: throw OpenAiError.Invalid("prompt must be a string, an array of one string, or an array of token ids", "prompt");
        }
    }

    /// <summary>Chat messages: role system/developer/user/assistant, content a string or an array of text parts.</summary>
    public List<ChatMessage> Messages()
    {
        if (Get("messages") is not { ValueKind: JsonValueKind.Array } list || list.GetArrayLength() == 0)
            throw OpenAiError.Invalid("messages must be a non-empty array", "messages");
        var messages = new List<ChatMessage>();
        int i = 0;
        foreach (var m in list.EnumerateArray())
        {
            var at = $"messages[{i++}]";
            if (m.ValueKind != JsonValueKind.Object) throw OpenAiError.Invalid($"{at} must be an object", at);
            var role = m.TryGetProperty("role", out var r) && r.ValueKind == JsonValueKind.String ? r.GetString()! : "";
            ChatRole chatRole = role switch
            {
                "system" or "developer" => ChatRole.System,
                "user" => ChatRole.User,
                "assistant" => ChatRole.Assistant,
                _ => throw OpenAiError.Invalid($"{at}.role must be system, developer, user or assistant (got '{role}')", $"{at}.role"),
            };
            messages.Add(new ChatMessage(chatRole, Content(m, at)));
        }
        return messages;
    }

    static string Content(JsonElement m, string at)
    {
        if (!m.TryGetProperty("content", out var c) || c.ValueKind == JsonValueKind.Null) return "";
        if (c.ValueKind == JsonValueKind.String) return c.GetString()!;
        if (c.ValueKind == JsonValueKind.Array)
            return string.Concat(c.EnumerateArray().Select(p =>
                p.ValueKind == JsonValueKind.Object && p.TryGetProperty("type", out var t) && t.ValueEquals("text")
                && p.TryGetProperty("text", out var text) && text.ValueKind == JsonValueKind.String
                    ? text.GetString()
                    : throw OpenAiError.Invalid($"{at}.content: only text parts are supported", $"{at}.content")));
        throw OpenAiError.Invalid($"{at}.content must be a string or an array of text parts", $"{at}.content");
    }
}
