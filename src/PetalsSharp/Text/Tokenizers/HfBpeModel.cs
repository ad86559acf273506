using System.Text;
using System.Text.Json;
using Microsoft.ML.Tokenizers;

namespace PetalsSharp.Text.Tokenizers;

/// <summary>
/// The BPE model of a <c>tokenizer.json</c>. Merging is delegated to <see cref="BpeTokenizer"/>; this class adds what
/// it lacks: <c>byte_fallback</c>, <c>ignore_merges</c> and HF's handling of characters missing from the vocabulary.
/// </summary>
internal sealed class HfBpeModel
{
    private readonly Dictionary<string, int> _vocab;
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _lookup;
    private readonly BpeTokenizer _engine;
    private readonly int? _unkId;
    private readonly bool _fuseUnk;
    private readonly bool _ignoreMerges;
    private readonly int[]? _byteIds; // id of <0xHH> per byte when byte_fallback is on and all 256 exist

    private HfBpeModel(Dictionary<string, int> vocab, List<string> merges, JsonElement model, string file)
    {
        _vocab = vocab;
        _lookup = vocab.GetAlternateLookup<ReadOnlySpan<char>>();
        _fuseUnk = HfJson.Bool(model, "fuse_unk", false);
        _ignoreMerges = HfJson.Bool(model, "ignore_merges", false);
        if (HfJson.String(model, "unk_token") is string unk)
        {
            _unkId = vocab.TryGetValue(unk, out int id) ? id : throw HfJson.Invalid(file, $"unk_token '{unk}' is not in the vocabulary");
        }

        if (HfJson.Bool(model, "byte_fallback", false))
        {
            var ids = new int[256];
            for (int b = 0; b < 256; b++)
            {
                if (!vocab.TryGetValue($"<0x{b:X2}>", out ids[b]))
                {
                    throw HfJson.Invalid(file, $"byte_fallback is on but '<0x{b:X2}>' is not in the vocabulary");
                }
            }

            _byteIds = ids;
        }

        try
        {
            _engine = BpeTokenizer.Create(new BpeOptions(vocab) { Merges = merges, PreTokenizer = new WholeText() });
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            throw HfJson.Invalid(file, $"the BPE vocabulary or merges were rejected ({ex.Message})");
        }
    }

    public IReadOnlyDictionary<string, int> Vocab => _vocab;

    public static HfBpeModel Parse(JsonElement model, string file)
    {
        string? type = HfJson.Type(model);
        if (type is not (null or "BPE"))
        {
            throw HfJson.Unsupported(file, "model type", type, "BPE");
        }

        if (HfJson.Prop(model, "dropout") is { ValueKind: JsonValueKind.Number } dropout && dropout.GetDouble() > 0)
        {
            throw HfJson.Unsupported(file, "BPE option", "dropout", "dropout null or 0");
        }

        foreach (var affix in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
        {
            if (!string.IsNullOrEmpty(HfJson.String(model, affix)))
            {
                throw HfJson.Unsupported(file, "BPE option", affix, "null or empty");
            }
        }

        var vocabJson = HfJson.Prop(model, "vocab");
        if (vocabJson.ValueKind != JsonValueKind.Object)
        {
            throw HfJson.Invalid(file, "model has no 'vocab' object");
        }

        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in vocabJson.EnumerateObject())
        {
            vocab[p.Name] = p.Value.GetInt32();
        }

        var merges = new List<string>();
        foreach (var m in HfJson.Array(model, "merges", file, "model"))
        {
            (string left, string right) = m.ValueKind switch
            {
                JsonValueKind.String when m.GetString()!.Split(' ') is [var l, var r] => (l, r),
                JsonValueKind.Array when m.GetArrayLength() == 2 => (m[0].GetString()!, m[1].GetString()!),
                _ => throw HfJson.Invalid(file, $"merge {m.GetRawText()} is neither \"left right\" nor [left, right]"),
            };
            if (left.Contains(' ') || right.Contains(' '))
            {
                // BpeTokenizer only takes "left right" strings, which cannot express a space inside a token.
                throw HfJson.Unsupported(file, "BPE merge", $"[{left}, {right}] containing a space", "merges of tokens without spaces");
            }

            merges.Add(left + " " + right);
        }

        return new HfBpeModel(vocab, merges, model, file);
    }

    /// <summary>Encodes one pre-tokenized word, appending its ids.</summary>
    public void EncodeWord(string word, List<int> ids)
    {
        if (_ignoreMerges && _vocab.TryGetValue(word, out int whole))
        {
            ids.Add(whole);
            return;
        }

        // Characters outside the vocabulary can never take part in a merge, so they split the word into
        // runs the engine can encode on its own; the characters themselves become byte pieces or <unk>.
        int runStart = 0;
        bool lastWasUnk = false;
        Span<byte> utf8 = stackalloc byte[4];
        for (int i = 0; i < word.Length;)
        {
            Rune.DecodeFromUtf16(word.AsSpan(i), out Rune rune, out int length);
            if (_lookup.ContainsKey(word.AsSpan(i, length)))
            {
                i += length;
                continue;
            }

            if (i > runStart)
            {
                ids.AddRange(_engine.EncodeToIds(word[runStart..i]));
                lastWasUnk = false;
            }

            if (_byteIds is not null)
            {
                int n = rune.EncodeToUtf8(utf8);
                for (int k = 0; k < n; k++)
                {
                    ids.Add(_byteIds[utf8[k]]);
                }

                lastWasUnk = false;
            }
            else if (_unkId is int unk && !(_fuseUnk && lastWasUnk))
            {
                ids.Add(unk);
                lastWasUnk = true;
            }

            i += length;
            runStart = i;
        }

        if (word.Length > runStart)
        {
            ids.AddRange(_engine.EncodeToIds(runStart == 0 ? word : word[runStart..]));
        }
    }

    /// <summary>Keeps each word whole: splitting is done by the <c>tokenizer.json</c> pre-tokenizer, not by the engine.</summary>
    private sealed class WholeText : PreTokenizer
    {
        public override IEnumerable<(int Offset, int Length)> PreTokenize(string text) =>
            text.Length == 0 ? [] : [(0, text.Length)];

        public override IEnumerable<(int Offset, int Length)> PreTokenize(ReadOnlySpan<char> text) =>
            text.Length == 0 ? [] : [(0, text.Length)];
    }
}
