using System.Text.Json;

namespace PetalsSharp.Text.Templates;

/// <summary>One message of a conversation: <c>system</c>, <c>user</c> or <c>assistant</c>, and its text.</summary>
public sealed record ChatTurn(string Role, string Content);

/// <summary>
/// A model's chat template (the Jinja <c>chat_template</c> of its <c>tokenizer_config.json</c>), rendered the way
/// transformers' <c>apply_chat_template(..., tokenize=False)</c> does. Only the Jinja subset chat templates use is
/// supported (see docs/hub.md); anything else is rejected when parsing, with the construct named.
/// </summary>
public sealed class ChatTemplate
{
    readonly IReadOnlyList<Node> _nodes;

    ChatTemplate(string source, IReadOnlyList<Node> nodes, string? bosToken, string? eosToken)
    {
        Source = source;
        _nodes = nodes;
        BosToken = bosToken;
        EosToken = eosToken;
    }

    /// <summary>The template's Jinja source.</summary>
    public string Source { get; }

    /// <summary>The value of <c>bos_token</c> in the template (null: undefined).</summary>
    public string? BosToken { get; }

    /// <summary>The value of <c>eos_token</c> in the template (null: undefined).</summary>
    public string? EosToken { get; }

    /// <summary>
    /// Reads <c>chat_template</c> from <paramref name="modelDir"/>/tokenizer_config.json: a string, or a list of
    /// <c>{name, template}</c> of which "default" is taken. Also reads <c>bos_token</c>/<c>eos_token</c>
    /// (a string or <c>{content}</c>). Null when the folder has no template; a separate <c>chat_template.jinja</c>
    /// file (newer transformers) is used when the config has none.
    /// </summary>
    /// <exception cref="ChatTemplateException">The file is malformed or the template uses unsupported syntax.</exception>
    public static ChatTemplate? TryLoad(string modelDir)
    {
        string configPath = Path.Combine(modelDir, "tokenizer_config.json");
        string? template = null, bos = null, eos = null;
        if (File.Exists(configPath))
        {
            JsonDocument doc;
            try
            {
                doc = JsonDocument.Parse(File.ReadAllBytes(configPath));
            }
            catch (JsonException e)
            {
                throw new ChatTemplateException($"{configPath} is not valid JSON: {e.Message}");
            }
            using (doc)
            {
                if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new ChatTemplateException($"{configPath}: expected a JSON object");
                template = ReadTemplate(doc.RootElement, configPath);
                bos = TokenContent(doc.RootElement, "bos_token");
                eos = TokenContent(doc.RootElement, "eos_token");
            }
        }
        string jinjaPath = Path.Combine(modelDir, "chat_template.jinja");
        if (template is null && File.Exists(jinjaPath)) template = File.ReadAllText(jinjaPath);
        return template is null ? null : Parse(template, bos, eos);
    }

    /// <summary>Parses a template; <paramref name="bosToken"/>/<paramref name="eosToken"/> are the values it sees.</summary>
    /// <exception cref="ChatTemplateException">Syntax outside the supported Jinja subset, or malformed syntax.</exception>
    public static ChatTemplate Parse(string template, string? bosToken, string? eosToken)
    {
        ArgumentNullException.ThrowIfNull(template);
        return new ChatTemplate(template, ChatTemplateParser.Parse(template), bosToken, eosToken);
    }

    /// <summary>Renders <paramref name="messages"/>; with <paramref name="addGenerationPrompt"/> the text ends where the assistant's reply starts.</summary>
    /// <exception cref="ChatTemplateException">The template called <c>raise_exception</c> (its message is kept) or failed to evaluate.</exception>
    public string Apply(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt = true)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var list = messages.Select(m => (object?)new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["role"] = m.Role,
            ["content"] = m.Content,
        }).ToList();
        var globals = new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["messages"] = list,
            ["add_generation_prompt"] = addGenerationPrompt,
        };
        if (BosToken is not null) globals["bos_token"] = BosToken;
        if (EosToken is not null) globals["eos_token"] = EosToken;
        return ChatTemplateRenderer.Render(_nodes, globals);
    }

    static string? ReadTemplate(JsonElement config, string path)
    {
        if (!config.TryGetProperty("chat_template", out var t) || t.ValueKind == JsonValueKind.Null) return null;
        if (t.ValueKind == JsonValueKind.String) return t.GetString();
        if (t.ValueKind != JsonValueKind.Array) throw new ChatTemplateException($"{path}: chat_template must be a string or a list of {{name, template}}");
        foreach (var entry in t.EnumerateArray())
        {
            if (entry.ValueKind == JsonValueKind.Object
                && entry.TryGetProperty("name", out var name) && name.ValueKind == JsonValueKind.String && name.GetString() == "default"
                && entry.TryGetProperty("template", out var body) && body.ValueKind == JsonValueKind.String)
                return body.GetString();
        }
        throw new ChatTemplateException($"{path}: chat_template is a list without a \"default\" entry");
    }

    // transformers writes special tokens either as plain strings or as AddedToken objects.
    static string? TokenContent(JsonElement owner, string name) =>
        owner.TryGetProperty(name, out var v) ? v.ValueKind switch
        {
            JsonValueKind.String => v.GetString(),
            JsonValueKind.Object when v.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String => c.GetString(),
            _ => null,
        } : null;
}

/// <summary>A chat template that cannot be parsed or rendered, or that raised an error itself (<c>raise_exception</c>).</summary>
public sealed class ChatTemplateException : Exception
{
    public ChatTemplateException(string message) : base(message) { }

    public ChatTemplateException(string message, Exception inner) : base(message, inner) { }

    /// <summary>True when the template itself called <c>raise_exception</c>: the message is the template's.</summary>
    public bool Raised { get; init; }

    internal bool HasLine { get; init; }
}
