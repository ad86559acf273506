using MlTokenizers = Microsoft.ML.Tokenizers;

namespace PetalsSharp.Text.Tokenizers;

/// <summary>
/// A SentencePiece BPE tokenizer (<c>tokenizer.model</c>, as used by Llama 1/2) backed by
/// <see cref="MlTokenizers.LlamaTokenizer"/>.
/// </summary>
/// <remarks>
/// The library reads the model, normalizes and decodes. BPE merging of BPE models is done by this project's
/// <see cref="SentencePieceBpe"/>, because the library breaks score ties unlike sentencepiece.
/// 
/// Like the sentencepiece library, text such as <c>&lt;s&gt;</c> inside the input is encoded as plain text,
/// not as the control token.
/// </remarks>
public sealed class SentencePieceTokenizer : ITextTokenizer
{
    private readonly MlTokenizers.LlamaTokenizer _inner;
    private readonly SentencePieceBpe? _bpe;
    private readonly string?[] _pieces;

    private SentencePieceTokenizer(MlTokenizers.LlamaTokenizer inner, SentencePieceBpe? bpe, TokenizerSettings settings)
    {
        _inner = inner;
        _bpe = bpe;
        int size = 0;
        foreach (var kv in inner.Vocabulary)
        {
            size = Math.Max(size, kv.Value + 1);
        }

        _pieces = new string?[size];
        foreach (var kv in inner.Vocabulary)
        {
            _pieces[kv.Value] = kv.Key;
        }

        BosId = Lookup(settings.BosToken) ?? inner.BeginningOfSentenceId;
        EosId = Lookup(settings.EosToken) ?? inner.EndOfSentenceId;
        // HF LlamaTokenizer defaults add_bos_token to true.
        AddBos = settings.AddBos ?? true;
    }

    /// <summary>Loads a SentencePiece <c>tokenizer.model</c> file.</summary>
    /// <param name="path">Path of the <c>tokenizer.model</c> file.</param>
    /// <param name="settings">Overrides from <c>tokenizer_config.json</c>, if any.</param>
    /// <returns>The tokenizer.</returns>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is not a SentencePiece BPE model.</exception>
    public static SentencePieceTokenizer Load(string path, TokenizerSettings? settings = null)
    {
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"SentencePiece model '{path}' does not exist.", path);
        }

        byte[] bytes = File.ReadAllBytes(path);
        try
        {
            // BOS is added here rather than by the library so that empty text still gets it.
            var inner = MlTokenizers.LlamaTokenizer.Create(new MemoryStream(bytes), addBeginOfSentence: false, addEndOfSentence: false);
            var bpe = SentencePieceBpe.TryCreate(bytes, inner.ByteFallback, inner.UnknownId);
            return new SentencePieceTokenizer(inner, bpe, settings ?? TokenizerSettings.None);
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            throw new InvalidDataException($"'{path}' is not a supported SentencePiece model: {ex.Message}", ex);
        }
    }

    /// <inheritdoc />
    public int VocabSize => _pieces.Length;

    /// <inheritdoc />
    public int? BosId { get; }

    /// <inheritdoc />
    public int? EosId { get; }

    /// <inheritdoc />
    public bool AddBos { get; }

    /// <inheritdoc />
    public IReadOnlyList<int> Encode(string text, bool? addBos = null)
    {
        ArgumentNullException.ThrowIfNull(text);
        text = UnicodeText.ReplaceLoneSurrogates(text);
        var ids = new List<int>();
        if ((addBos ?? AddBos) && BosId is int bos)
        {
            ids.Add(bos);
        }

        if (text.Length == 0)
        {
            return ids;
        }

        if (_bpe is null)
        {
            ids.AddRange(_inner.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false));
        }
        else
        {
            _bpe.Encode(_inner.Normalizer?.Normalize(text) ?? text, ids);
        }

        return ids;
    }

    /// <inheritdoc />
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(ids);
        // LlamaTokenizer throws on ids outside its vocabulary; models often have padded embedding rows.
        var known = ids.Where(id => (uint)id < (uint)_pieces.Length && _pieces[id] is not null).ToList();
        return _inner.Decode(known, considerSpecialTokens: !skipSpecialTokens) ?? string.Empty;
    }

    /// <inheritdoc />
    public string? TokenToString(int id) => (uint)id < (uint)_pieces.Length ? _pieces[id] : null;

    private int? Lookup(string? token)
    {
        if (token is null)
        {
            return null;
        }

        return _inner.Vocabulary.TryGetValue(token, out int id) ? id : null;
    }
}
