namespace PetalsSharp.Text.Tokenizers;

/// <summary>
/// Converts between text and the token ids a model was trained on.
/// </summary>
/// <remarks>
/// Implementations are immutable after construction and safe to use from several threads.
/// </remarks>
public interface ITextTokenizer
{
    /// <summary>Number of ids the tokenizer can produce: the largest known id plus one.</summary>
    int VocabSize { get; }

    /// <summary>Beginning-of-sequence id, or <c>null</c> when the tokenizer has none.</summary>
    int? BosId { get; }

    /// <summary>End-of-sequence id, or <c>null</c> when the tokenizer has none.</summary>
    int? EosId { get; }

    /// <summary>Whether <see cref="Encode"/> prepends <see cref="BosId"/> when the caller does not say.</summary>
    bool AddBos { get; }

    /// <summary>Encodes <paramref name="text"/> into token ids.</summary>
    /// <param name="text">The text to encode. Unpaired surrogates are encoded as U+FFFD.</param>
    /// <param name="addBos">
    /// Whether to prepend <see cref="BosId"/>; <c>null</c> uses <see cref="AddBos"/>.
    /// Ignored when the tokenizer has no BOS id.
    /// </param>
    /// <returns>The token ids.</returns>
    IReadOnlyList<int> Encode(string text, bool? addBos = null);

    /// <summary>Decodes token ids into text.</summary>
    /// <param name="ids">The ids to decode. Ids the tokenizer does not know are skipped.</param>
    /// <param name="skipSpecialTokens">Whether special tokens such as BOS and EOS are left out of the text.</param>
    /// <returns>The decoded text.</returns>
    string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true);

    /// <summary>The raw vocabulary entry for <paramref name="id"/> (for example <c>▁the</c> or <c>Ġthe</c>), or <c>null</c> when unknown.</summary>
    /// <param name="id">The token id.</param>
    /// <returns>The token string or <c>null</c>.</returns>
    string? TokenToString(int id);
}
