using System.Text.Json;
using System.Text.RegularExpressions;

namespace PetalsSharp.Text.Tokenizers;

/// <summary>
/// A tokenizer read from a Hugging Face <c>tokenizer.json</c> with a BPE model: SentencePiece-style BPE with byte
/// fallback (Llama 2) or byte-level BPE (GPT-2, Llama 3).
/// </summary>
/// <remarks>
/// Encoding follows HF <c>tokenizers</c>: added tokens are matched literally in the raw input (longest first),
/// the text between them is normalized, pre-tokenized and run through BPE piece by piece, and BOS is prepended
/// as the post-processor or <c>tokenizer_config.json</c> says. Added tokens' <c>lstrip</c>/<c>rstrip</c>/
/// <c>single_word</c> flags are not applied, and EOS appended by a post-processor template is not added.
/// </remarks>
public sealed class HfJsonTokenizer : ITextTokenizer
{
    private readonly HfBpeModel _model;
    private readonly HfNormalizer? _normalizer;
    private readonly HfPreTokenizer? _preTokenizer;
    private readonly HfDecoder? _decoder;
    private readonly Dictionary<string, int> _added = new(StringComparer.Ordinal);
    private readonly HashSet<int> _special = [];
    private readonly Regex? _addedRegex;
    private readonly string?[] _tokens;

    private HfJsonTokenizer(JsonElement root, string file, TokenizerSettings settings)
    {
        _model = HfBpeModel.Parse(HfJson.Prop(root, "model"), file);
        _normalizer = HfNormalizer.Parse(HfJson.Prop(root, "normalizer"), file);
        _preTokenizer = HfPreTokenizer.Parse(HfJson.Prop(root, "pre_tokenizer"), file);
        _decoder = HfDecoder.Parse(HfJson.Prop(root, "decoder"), file);

        var added = HfJson.Prop(root, "added_tokens");
        if (added.ValueKind == JsonValueKind.Array)
        {
            foreach (var t in added.EnumerateArray())
            {
                string content = HfJson.String(t, "content") ?? throw HfJson.Invalid(file, "an added token has no 'content'");
                int id = HfJson.Int(t, "id", -1);
                if (id < 0 || content.Length == 0)
                {
                    throw HfJson.Invalid(file, $"added token '{content}' has no valid id");
                }

                _added[content] = id;
                if (HfJson.Bool(t, "special", false))
                {
                    _special.Add(id);
                }
            }
        }

        if (_added.Count > 0)
        {
            // Longest first, so .NET's first-alternative-wins matches HF's leftmost-longest.
            var alternatives = _added.Keys.OrderByDescending(k => k.Length).Select(Regex.Escape);
            _addedRegex = new Regex(string.Join('|', alternatives), RegexOptions.CultureInvariant);
        }

        int size = Math.Max(
            _model.Vocab.Count == 0 ? 0 : _model.Vocab.Values.Max() + 1,
            _added.Count == 0 ? 0 : _added.Values.Max() + 1);
        _tokens = new string?[size];
        foreach (var kv in _model.Vocab)
        {
            _tokens[kv.Value] = kv.Key;
        }

        foreach (var kv in _added)
        {
            _tokens[kv.Value] = kv.Key;
        }

        int? templateBos = TemplateBos(HfJson.Prop(root, "post_processor"));
        BosId = TokenId(settings.BosToken) ?? templateBos;
        EosId = TokenId(settings.EosToken);
        AddBos = settings.AddBos ?? templateBos is not null;
    }

    /// <summary>Loads a <c>tokenizer.json</c> file.</summary>
    /// <param name="path">Path of the <c>tokenizer.json</c> file.</param>
    /// <param name="settings">Overrides from <c>tokenizer_config.json</c>, if any.</param>
    /// <returns>The tokenizer.</returns>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is not valid JSON or lacks required parts.</exception>
    /// <exception cref="NotSupportedException">The file uses a model, normalizer, pre-tokenizer or decoder this class does not implement.</exception>
    public static HfJsonTokenizer Load(string path, TokenizerSettings? settings = null)
    {
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"Tokenizer file '{path}' does not exist.", path);
        }

        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(File.ReadAllBytes(path));
        }
        catch (JsonException ex)
        {
            throw new InvalidDataException($"'{path}' is not valid JSON: {ex.Message}", ex);
        }

        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object || HfJson.Prop(doc.RootElement, "model").ValueKind != JsonValueKind.Object)
            {
                throw HfJson.Invalid(path, "it has no 'model' object");
            }

            return new HfJsonTokenizer(doc.RootElement, path, settings ?? TokenizerSettings.None);
        }
    }

    /// <inheritdoc />
    public int VocabSize => _tokens.Length;

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

        int last = 0;
        if (_addedRegex is not null)
        {
            foreach (Match m in _addedRegex.Matches(text))
            {
                EncodeSegment(text[last..m.Index], last == 0, ids);
                ids.Add(_added[m.Value]);
                last = m.Index + m.Length;
            }
        }

        EncodeSegment(last == 0 ? text : text[last..], last == 0, ids);
        return ids;
    }

    /// <inheritdoc />
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var tokens = new List<string>();
        foreach (int id in ids)
        {
            if ((uint)id >= (uint)_tokens.Length || _tokens[id] is not string token || (skipSpecialTokens && _special.Contains(id)))
            {
                continue;
            }

            tokens.Add(token);
        }

        // HF joins with spaces when a tokenizer has no decoder.
        return _decoder is null ? string.Join(' ', tokens) : string.Concat(_decoder.Apply(tokens));
    }

    /// <inheritdoc />
    public string? TokenToString(int id) => (uint)id < (uint)_tokens.Length ? _tokens[id] : null;

    /// <summary>Encodes the text between added tokens; <paramref name="atStart"/>: it begins the input.</summary>
    private void EncodeSegment(string segment, bool atStart, List<int> ids)
    {
        if (segment.Length == 0)
        {
            return;
        }

        string normalized = _normalizer?.Apply(segment) ?? segment;
        if (_preTokenizer is null)
        {
            _model.EncodeWord(normalized, ids);
            return;
        }

        foreach (var word in _preTokenizer.Run(normalized, atStart))
        {
            _model.EncodeWord(word, ids);
        }
    }

    private int? TokenId(string? token)
    {
        if (token is null)
        {
            return null;
        }

        if (_added.TryGetValue(token, out int id) || _model.Vocab.TryGetValue(token, out id))
        {
            return id;
        }

        return null;
    }

    /// <summary>The id of the special token a TemplateProcessing puts before the sequence, if any.</summary>
    private int? TemplateBos(JsonElement processor)
    {
        switch (HfJson.Type(processor))
        {
            case "Sequence":
                var processors = HfJson.Prop(processor, "processors");
                return processors.ValueKind == JsonValueKind.Array
                    ? processors.EnumerateArray().Select(TemplateBos).FirstOrDefault(id => id is not null)
                    : null;
            case "TemplateProcessing":
                var single = HfJson.Prop(processor, "single");
                if (single.ValueKind != JsonValueKind.Array || single.GetArrayLength() == 0)
                {
                    return null;
                }

                var first = HfJson.Prop(single[0], "SpecialToken");
                if (HfJson.String(first, "id") is not string name)
                {
                    return null;
                }

                var entry = HfJson.Prop(HfJson.Prop(processor, "special_tokens"), name);
                var entryIds = HfJson.Prop(entry, "ids");
                if (entryIds.ValueKind == JsonValueKind.Array && entryIds.GetArrayLength() > 0)
                {
                    return entryIds[0].GetInt32();
                }

                return TokenId(name);
            default:
                return null;
        }
    }
}
