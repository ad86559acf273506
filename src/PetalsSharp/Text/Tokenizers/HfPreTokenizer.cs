using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace PetalsSharp.Text.Tokenizers;

/// <summary>A <c>tokenizer.json</c> pre-tokenizer: splits normalized text into the words BPE runs on.</summary>
internal abstract class HfPreTokenizer
{
    /// <summary>The GPT-2 split pattern that HF's ByteLevel pre-tokenizer applies when <c>use_regex</c> is true.</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private const string SupportedTypes =
        "Sequence, ByteLevel, Metaspace, Split, Punctuation, Digits (behaviors Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous)";

    private static readonly Regex Gpt2Regex = new(Gpt2Pattern, RegexOptions.CultureInvariant | RegexOptions.Compiled);

    /// <summary>
    /// Splits one piece and appends the non-empty results to <paramref name="output"/>. <paramref name="atStart"/>: the
    /// piece begins at offset 0 of the input (what Metaspace's <c>prepend_scheme: first</c> asks).
    /// </summary>
    public abstract void Split(string piece, List<string> output, bool atStart);

    /// <summary>Splits <paramref name="text"/>, a segment between added tokens that starts the input when <paramref name="atStart"/>.</summary>
    public List<string> Run(string text, bool atStart = true)
    {
        var output = new List<string>();
        Split(text, output, atStart);
        return output;
    }

    public static HfPreTokenizer? Parse(JsonElement e, string file)
    {
        if (HfJson.IsNull(e))
        {
            return null;
        }

        string? type = HfJson.Type(e);
        switch (type)
        {
            case "Sequence":
                return new SequencePreTokenizer(
                    HfJson.Array(e, "pretokenizers", file, "pre_tokenizer Sequence").Select(p => Parse(p, file)).OfType<HfPreTokenizer>().ToArray());
            case "ByteLevel":
                return new ByteLevelPreTokenizer(HfJson.Bool(e, "add_prefix_space", true), HfJson.Bool(e, "use_regex", true));
            case "Metaspace":
                return MetaspacePreTokenizer.FromJson(e, file);
            case "Split":
                if (HfJson.Bool(e, "invert", false))
                {
                    throw HfJson.Unsupported(file, "pre_tokenizer", "Split with invert=true", SupportedTypes);
                }

                var regex = HfJson.Pattern(e, file, "Split pre_tokenizer");
                return new SplitPreTokenizer(p => UnicodeText.Matches(regex, p), Behavior(e, file, "Isolated"));
            case "Punctuation":
                return new SplitPreTokenizer(p => SingleChars(p, IsPunctuation), Behavior(e, file, "Isolated"));
            case "Digits":
                bool individual = HfJson.Bool(e, "individual_digits", false);
                return new SplitPreTokenizer(p => SingleChars(p, Rune.IsNumber), individual ? "Isolated" : "Contiguous");
            default:
                throw HfJson.Unsupported(file, "pre_tokenizer", type, SupportedTypes);
        }
    }

    private static string Behavior(JsonElement e, string file, string fallback)
    {
        string behavior = HfJson.String(e, "behavior") ?? fallback;
        return behavior is "Isolated" or "Removed" or "MergedWithPrevious" or "MergedWithNext" or "Contiguous"
            ? behavior
            : throw HfJson.Unsupported(file, "pre_tokenizer", $"{HfJson.Type(e)} with behavior {behavior}", SupportedTypes);
    }

    // HF counts ASCII symbols such as '$' or '+' as punctuation too (Rust's is_ascii_punctuation).
    private static bool IsPunctuation(Rune r) => Rune.IsPunctuation(r) || (r.IsAscii && Rune.IsSymbol(r));

    private static IEnumerable<(int Index, int Length)> SingleChars(string piece, Func<Rune, bool> predicate)
    {
        for (int i = 0; i < piece.Length;)
        {
            Rune.DecodeFromUtf16(piece.AsSpan(i), out Rune rune, out int length);
            if (predicate(rune))
            {
                yield return (i, length);
            }

            i += length;
        }
    }

    private sealed class SequencePreTokenizer(HfPreTokenizer[] steps) : HfPreTokenizer
    {
        public override void Split(string piece, List<string> output, bool atStart)
        {
            var current = new List<string> { piece };
            foreach (var step in steps)
            {
                var next = new List<string>(current.Count * 2);
                for (int i = 0; i < current.Count; i++)
                {
                    step.Split(current[i], next, atStart && i == 0);
                }

                current = next;
            }

            output.AddRange(current);
        }
    }

    /// <summary>Optionally splits with the GPT-2 pattern, then maps every piece to the byte-level alphabet.</summary>
    private sealed class ByteLevelPreTokenizer(bool addPrefixSpace, bool useRegex) : HfPreTokenizer
    {
        public override void Split(string piece, List<string> output, bool atStart)
        {
            if (addPrefixSpace && !piece.StartsWith(' '))
            {
                piece = " " + piece;
            }

            if (!useRegex)
            {
                if (piece.Length > 0)
                {
                    output.Add(ByteLevelAlphabet.Encode(piece));
                }

                return;
            }

            // Isolated, as in HF: text the pattern skips would become its own piece (the pattern covers all text).
            int last = 0;
            foreach (var (index, length) in UnicodeText.Matches(Gpt2Regex, piece))
            {
                if (length == 0)
                {
                    continue;
                }

                if (index > last)
                {
                    output.Add(ByteLevelAlphabet.Encode(piece[last..index]));
                }

                output.Add(ByteLevelAlphabet.Encode(piece.Substring(index, length)));
                last = index + length;
            }

            if (last < piece.Length)
            {
                output.Add(ByteLevelAlphabet.Encode(piece[last..]));
            }
        }
    }

    /// <summary>Splits around the ranges a matcher finds, keeping or gluing the matches as HF's <c>SplitDelimiterBehavior</c> says.</summary>
    private sealed class SplitPreTokenizer(Func<string, IEnumerable<(int Index, int Length)>> matcher, string behavior) : HfPreTokenizer
    {
        public override void Split(string piece, List<string> output, bool atStart)
        {
            int last = 0;
            string? carry = null; // a match waiting to be glued to the next piece (MergedWithNext)
            int contiguousStart = -1; // start of the current run of adjacent matches (Contiguous)
            foreach (var (index, length) in matcher(piece))
            {
                if (length == 0)
                {
                    continue;
                }

                string before = piece[last..index];
                switch (behavior)
                {
                    case "Isolated":
                        AddNonEmpty(output, before);
                        output.Add(piece.Substring(index, length));
                        break;
                    case "Removed":
                        AddNonEmpty(output, before);
                        break;
                    case "MergedWithPrevious":
                        output.Add(before + piece.Substring(index, length));
                        break;
                    case "MergedWithNext":
                        AddNonEmpty(output, carry + before);
                        carry = piece.Substring(index, length);
                        break;
                    default:
                        if (contiguousStart >= 0 && before.Length > 0)
                        {
                            output.Add(piece[contiguousStart..last]);
                            contiguousStart = -1;
                        }

                        if (contiguousStart < 0)
                        {
                            AddNonEmpty(output, before);
                            contiguousStart = index;
                        }

                        break;
                }

                last = index + length;
            }

            if (contiguousStart >= 0)
            {
                output.Add(piece[contiguousStart..last]);
            }

            AddNonEmpty(output, carry + piece[last..]);
        }

        private static void AddNonEmpty(List<string> output, string s)
        {
            if (s.Length > 0)
            {
                output.Add(s);
            }
        }
    }
}
