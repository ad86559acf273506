using System.Text;
using System.Text.Json;

namespace PetalsSharp.Text.Tokenizers;

/// <summary>
/// The BPE model of a <c>tokenizer.json</c>: HF's merge loop (word.rs <c>merge_all</c>), with <c>byte_fallback</c>,
/// <c>ignore_merges</c> and HF's handling of characters missing from the vocabulary.
/// </summary>
/// <remarks>
/// Merging keeps a priority queue of candidate pairs over a linked list of symbols, so one word costs
/// O(n log n). Microsoft.ML.Tokenizers' BpeTokenizer, used before, was quadratic in the word's length, and a
/// tokenizer without a pre-tokenizer (SentencePiece-style, like stories260K's) hands it a whole prompt as one word.
/// </remarks>
internal sealed class HfBpeModel
{
    private readonly Dictionary<string, int> _vocab;
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _lookup;
    private readonly Dictionary<(int Left, int Right), (int Rank, int Id)> _merges;
    private readonly int? _unkId;
    private readonly bool _fuseUnk;
    private readonly bool _ignoreMerges;
    private readonly int[]? _byteIds; // id of <0xHH> per byte when byte_fallback is on and all 256 exist

    private HfBpeModel(Dictionary<string, int> vocab, List<(string Left, string Right)> merges, JsonElement model, string file)
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

        // As HF builds its merge map: the rank is the merge's index, and a repeated pair keeps its last rank.
        _merges = new Dictionary<(int, int), (int, int)>(merges.Count);
        for (int rank = 0; rank < merges.Count; rank++)
        {
            var (left, right) = merges[rank];
            if (!vocab.TryGetValue(left, out int l) || !vocab.TryGetValue(right, out int r) || !vocab.TryGetValue(left + right, out int merged))
            {
                throw HfJson.Invalid(file, $"the BPE vocabulary or merges were rejected (merge '{left} {right}' names a token missing from the vocabulary)");
            }

            _merges[(l, r)] = (rank, merged);
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

        var merges = new List<(string, string)>();
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
                // The "left right" string form cannot express a space inside a token; refused in both forms alike.
                throw HfJson.Unsupported(file, "BPE merge", $"[{left}, {right}] containing a space", "merges of tokens without spaces");
            }

            merges.Add((left, right));
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
                Merge(word.AsSpan(runStart, i - runStart), ids);
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
            Merge(word.AsSpan(runStart), ids);
        }
    }

    /// <summary>
    /// Merges a run of characters that are all in the vocabulary: repeatedly the pair with the lowest merge rank,
    /// the leftmost winning ties, as HF's <c>Word::merge_all</c> does (stale queue entries are skipped).
    /// </summary>
    private void Merge(ReadOnlySpan<char> run, List<int> ids)
    {
        int n = 0;
        var id = new int[run.Length];
        for (int i = 0; i < run.Length; n++)
        {
            int length = char.IsHighSurrogate(run[i]) && i + 1 < run.Length && char.IsLowSurrogate(run[i + 1]) ? 2 : 1;
            id[n] = _lookup[run.Slice(i, length)];
            i += length;
        }

        var prev = new int[n];
        var next = new int[n];
        for (int i = 0; i < n; i++)
        {
            prev[i] = i - 1;
            next[i] = i + 1 < n ? i + 1 : -1;
        }

        var queue = new PriorityQueue<(int Pos, int Id), (int Rank, int Pos)>();
        void Consider(int left)
        {
            if (left >= 0 && next[left] >= 0 && _merges.TryGetValue((id[left], id[next[left]]), out var m))
            {
                queue.Enqueue((left, m.Id), (m.Rank, left));
            }
        }

        for (int i = 0; i + 1 < n; i++)
        {
            Consider(i);
        }

        while (queue.TryDequeue(out var top, out _))
        {
            // Stale: the left symbol was merged away, or either side changed since the pair was queued.
            int right = next[top.Pos];
            if (id[top.Pos] < 0 || right < 0 || !_merges.TryGetValue((id[top.Pos], id[right]), out var m) || m.Id != top.Id)
            {
                continue;
            }

            id[top.Pos] = top.Id;
            id[right] = -1;
            next[top.Pos] = next[right];
            if (next[right] >= 0)
            {
                prev[next[right]] = top.Pos;
            }

            Consider(prev[top.Pos]);
            Consider(top.Pos);
        }

        for (int s = n > 0 ? 0 : -1; s >= 0; s = next[s])
        {
            ids.Add(id[s]);
        }
    }
}
