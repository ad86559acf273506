using Microsoft.Extensions.AI;
using PetalsSharp.Text.Templates;

namespace PetalsSharp.Api.Chat;

/// <summary>
/// Turns chat messages into prompt text: with the model's chat template when it has one, otherwise the plain
/// fallback <c>"System: …\nUser: …\nAssistant: …\nAssistant:"</c> (one line per message, then the cue).
/// </summary>
public static class ChatPrompt
{
    /// <summary>
    /// A fallback prompt lets a base model run on into the next turn, so generation also stops at this
    /// (the text is cut before it).
    /// </summary>
    public const string FallbackStop = "\nUser:";

    /// <summary>The prompt's text and whether it came from a template (which writes its own BOS).</summary>
    public static (string Text, bool FromTemplate) Format(IEnumerable<ChatMessage> messages, ChatTemplate? template)
    {
        var turns = messages.Select(Turn).ToList();
        if (turns.Count == 0) throw new ArgumentException("messages must hold at least one message");
        if (template is not null) return (template.Apply(turns, addGenerationPrompt: true), true);
        var lines = turns.Select(t => $"{Capitalize(t.Role)}: {t.Content}");
        return (string.Join("\n", lines) + "\nAssistant:", false);
    }

    static ChatTurn Turn(ChatMessage m)
    {
        if (m.Contents.Any(c => c is not TextContent and not TextReasoningContent and not UsageContent))
            throw new NotSupportedException($"only text content is supported (got {string.Join(", ", m.Contents.Select(c => c.GetType().Name).Distinct())})");
        return new ChatTurn(m.Role.Value.ToLowerInvariant(), m.Text);
    }

    static string Capitalize(string role) => role.Length == 0 ? role : char.ToUpperInvariant(role[0]) + role[1..];
}
