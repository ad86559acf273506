namespace PetalsSharp.Text;

/// <summary>One message of a conversation, as a chat template sees it.</summary>
public sealed record ChatTurn(string Role, string Content);

/// <summary>
/// STUB (replaced at merge by the real Jinja chat template engine): the public API only. <see cref="TryLoad"/>
/// finds no template and <see cref="Apply"/> writes the plain "Role: content" fallback.
/// </summary>
public sealed class ChatTemplate
{
    ChatTemplate() { }

    /// <summary>The model folder's chat template, or null when tokenizer_config.json has none (the stub: always null).</summary>
    public static ChatTemplate? TryLoad(string modelDir) => null;

    /// <summary>Parses a template (the stub ignores it).</summary>
    public static ChatTemplate Parse(string template, string? bosToken, string? eosToken) => new();

    /// <summary>Renders <paramref name="messages"/> (the stub: "Role: content" lines, then "Assistant:").</summary>
    public string Apply(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt = true)
    {
        var lines = messages.Select(m => $"{char.ToUpperInvariant(m.Role[0])}{m.Role[1..]}: {m.Content}");
        return string.Join("\n", lines) + (addGenerationPrompt ? "\nAssistant:" : "");
    }
}

/// <summary>A chat template that cannot be parsed or rendered.</summary>
public sealed class ChatTemplateException : Exception
{
    public ChatTemplateException() { }
    public ChatTemplateException(string message) : base(message) { }
}
