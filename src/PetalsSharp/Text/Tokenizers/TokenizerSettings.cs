namespace PetalsSharp.Text.Tokenizers;

/// <summary>
/// Settings from <c>tokenizer_config.json</c> that override what the tokenizer file itself implies.
/// </summary>
/// <param name="AddBos">The <c>add_bos_token</c> value, or <c>null</c> when the file does not set it.</param>
/// <param name="BosToken">The <c>bos_token</c> content, or <c>null</c> when not set.</param>
/// <param name="EosToken">The <c>eos_token</c> content, or <c>null</c> when not set.</param>
public sealed record TokenizerSettings(bool? AddBos = null, string? BosToken = null, string? EosToken = null)
{
    /// <summary>Settings that override nothing.</summary>
    public static TokenizerSettings None { get; } = new();
}

/// <summary>Which tokenizer file <see cref="TokenizerLoader"/> reads.</summary>
public enum TokenizerFormat
{
    /// <summary><c>tokenizer.json</c> when present, else <c>tokenizer.model</c>.</summary>
    Auto,

    /// <summary>Hugging Face <c>tokenizer.json</c> only.</summary>
    HfJson,

    /// <summary>SentencePiece <c>tokenizer.model</c> only.</summary>
    SentencePiece,
}
