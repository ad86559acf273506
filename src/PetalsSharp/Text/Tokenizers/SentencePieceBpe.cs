using System.Text;

namespace PetalsSharp.Text.Tokenizers;

/// <summary>
/// SentencePiece's BPE encoding (bpe_model.cc): repeatedly merge the adjacent pair whose concatenation is the
/// highest-scoring piece, the leftmost pair winning ties; characters left outside the vocabulary become byte pieces.
/// </summary>
/// <remarks>
/// Microsoft.ML.Tokenizers 2.0.1's LlamaTokenizer breaks score ties differently (for "ooo" it yields "o","oo" where
/// sentencepiece, llama2.c and HF yield "oo","o"), so encoding is done here from the pieces and scores of the model file.
/// User-defined pieces are merged like normal ones instead of being matched in the raw text first.
/// </remarks>
internal sealed class SentencePieceBpe
{
    private readonly Dictionary<string, (int Id, float Score)> _pieces;
    private readonly Dictionary<string, (int Id, float Score)>.AlternateLookup<ReadOnlySpan<char>> _lookup;
    private readonly int[]? _byteIds;
    private readonly int _unkId;

    private SentencePieceBpe(Dictionary<string, (int Id, float Score)> pieces, int[]? byteIds, int unkId)
    {
        _pieces = pieces;
        _lookup = pieces.GetAlternateLookup<ReadOnlySpan<char>>();
        _byteIds = byteIds;
        _unkId = unkId;
    }

    /// <summary>
    /// Reads the pieces of a SentencePiece <c>ModelProto</c>; returns <c>null</c> when the model is not BPE.
    /// </summary>
    public static SentencePieceBpe? TryCreate(byte[] modelProto, bool byteFallback, int unkId)
    {
        var pieces = new Dictionary<string, (int, float)>(StringComparer.Ordinal);
        var bytePieces = new int[256];
        Array.Fill(bytePieces, -1);
        int modelType = 1; // UNIGRAM is the proto default
        int index = 0;
        var reader = new ProtoReader(modelProto);
        while (reader.Next(out int field, out int wire))
        {
            if (field == 1 && wire == 2)
            {
                var (piece, score, type) = ReadPiece(reader.ReadBytes());
                // NORMAL (1) and USER_DEFINED (4) take part in merges; BYTE (6) pieces serve byte fallback.
                if (type is 1 or 4)
                {
                    pieces.TryAdd(piece, (index, score));
                }
                else if (type == 6 && HfDecoder.TryParseBytePiece(piece, out byte b))
                {
                    bytePieces[b] = index;
                }

                index++;
            }
            else if (field == 2 && wire == 2)
            {
                var trainer = new ProtoReader(reader.ReadBytes());
                while (trainer.Next(out int f, out int w))
                {
                    if (f == 3 && w == 0)
                    {
                        modelType = (int)trainer.ReadVarint();
                    }
                    else
                    {
                        trainer.Skip(w);
                    }
                }
            }
            else
            {
                reader.Skip(wire);
            }
        }

        bool allBytes = Array.TrueForAll(bytePieces, id => id >= 0);
        return modelType == 2 ? new SentencePieceBpe(pieces, byteFallback && allBytes ? bytePieces : null, unkId) : null;
    }

    /// <summary>Encodes already normalized text (spaces escaped as ▁, dummy prefix added).</summary>
    public void Encode(string text, List<int> ids)
    {
        int n = 0;
        var start = new int[text.Length];
        var length = new int[text.Length];
        for (int i = 0; i < text.Length; n++)
        {
            Rune.DecodeFromUtf16(text.AsSpan(i), out _, out int len);
            start[n] = i;
            length[n] = len;
            i += len;
        }

        var prev = new int[n];
        var next = new int[n];
        for (int i = 0; i < n; i++)
        {
            prev[i] = i - 1;
            next[i] = i + 1 < n ? i + 1 : -1;
        }

        // Ties go to the smaller symbol index, i.e. the leftmost pair, as in sentencepiece's SymbolPairComparator.
        var agenda = new PriorityQueue<(int Left, int Right, int Size), (float NegScore, int Left)>();
        void MaybeAdd(int left, int right)
        {
            if (left < 0 || right < 0)
            {
                return;
            }

            int size = length[left] + length[right];
            if (_lookup.TryGetValue(text.AsSpan(start[left], size), out var piece))
            {
                agenda.Enqueue((left, right, size), (-piece.Score, left));
            }
        }

        for (int i = 0; i + 1 < n; i++)
        {
            MaybeAdd(i, i + 1);
        }

        while (agenda.TryDequeue(out var pair, out _))
        {
            // Stale entries: one side was merged away or grew since the pair was queued.
            if (length[pair.Left] == 0 || length[pair.Right] == 0 || length[pair.Left] + length[pair.Right] != pair.Size)
            {
                continue;
            }

            length[pair.Left] = pair.Size;
            length[pair.Right] = 0;
            next[pair.Left] = next[pair.Right];
            if (next[pair.Right] >= 0)
            {
                prev[next[pair.Right]] = pair.Left;
            }

            MaybeAdd(prev[pair.Left], pair.Left);
            MaybeAdd(pair.Left, next[pair.Left]);
        }

        Span<byte> utf8 = stackalloc byte[4];
        bool lastWasUnk = false;
        for (int s = n > 0 ? 0 : -1; s >= 0; s = next[s])
        {
            var span = text.AsSpan(start[s], length[s]);
            bool unknown = false;
            if (_lookup.TryGetValue(span, out var piece))
            {
                ids.Add(piece.Id);
            }
            else if (_byteIds is not null)
            {
                Rune.DecodeFromUtf16(span, out Rune rune, out _);
                int count = rune.EncodeToUtf8(utf8);
                for (int k = 0; k < count; k++)
                {
                    ids.Add(_byteIds[utf8[k]]);
                }
            }
            else
            {
                // sentencepiece fuses consecutive unknown characters into one <unk>.
                if (!lastWasUnk)
                {
                    ids.Add(_unkId);
                }

                unknown = true;
            }

            lastWasUnk = unknown;
        }
    }

    private static (string Piece, float Score, int Type) ReadPiece(byte[] message)
    {
        string piece = string.Empty;
        float score = 0;
        int type = 1; // NORMAL is the proto default
        var reader = new ProtoReader(message);
        while (reader.Next(out int field, out int wire))
        {
            switch (field, wire)
            {
                case (1, 2):
                    piece = Encoding.UTF8.GetString(reader.ReadBytes());
                    break;
                case (2, 5):
                    score = reader.ReadFloat();
                    break;
                case (3, 0):
                    type = (int)reader.ReadVarint();
                    break;
                default:
                    reader.Skip(wire);
                    break;
            }
        }

        return (piece, score, type);
    }
}
