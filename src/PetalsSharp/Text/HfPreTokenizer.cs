using System.Text.Json;
using System.Text.RegularExpressions;

namespace PetalsSharp.Text;

/// <summary>A <c>tokenizer.json</c> pre-tokenizer: splits normalized text into the words BPE runs on.</summary>
internal abstract class HfPreTokenizer
{
    /// <summary>The GPT-2 split pattern that HF's ByteLevel pre-tokenizer applies when <c>use_regex</c> is true.</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private const string SupportedTypes = "Sequence, ByteLevel, Split (Isolated, Removed, MergedWithPrevious, MergedWithNext)";

    private static readonly Regex Gpt2Regex = new(Gpt2Pattern, RegexOptions.CultureInvariant | RegexOptions.Compiled);

    /// <summary>Splits one piece and appends the non-empty results to <paramref name="output"/>.</summary>
    public abstract void Split(string piece, List<string> output);

    public List<string> Run(string text)
    {
        var output = new List<string>();
        Split(text, output);
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
            case "Split":
                if (HfJson.Bool(e, "invert", false))
                {
                    throw HfJson.Unsupported(file, "pre_tokenizer", "Split with invert=true", SupportedTypes);
                }

                string behavior = HfJson.String(e, "behavior") ?? "Isolated";
                if (behavior is not ("Isolated" or "Removed" or "MergedWithPrevious" or "MergedWithNext"))
                {
                    throw HfJson.Unsupported(file, "pre_tokenizer", $"Split with behavior {behavior}", SupportedTypes);
                }

                return new SplitPreTokenizer(HfJson.Pattern(e, file, "Split pre_tokenizer"), behavior);
            default:
                throw HfJson.Unsupported(file, "pre_tokenizer", type, SupportedTypes);
        }
    }

    private sealed class SequencePreTokenizer(HfPreTokenizer[] steps) : HfPreTokenizer
    {
        public override void Split(string piece, List<string> output)
        {
            var current = new List<string> { piece };
            foreach (var step in steps)
            {
                var next = new List<string>(current.Count * 2);
                foreach (var p in current)
                {
                    step.Split(p, next);
                }

                current = next;
            }

            output.AddRange(current);
        }
    }

    /// <summary>Optionally splits with the GPT-2 pattern, then maps every piece to the byte-level alphabet.</summary>
    private sealed class ByteLevelPreTokenizer(bool addPrefixSpace, bool useRegex) : HfPreTokenizer
    {
        public override void Split(string piece, List<string> output)
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

            foreach (Match m in Gpt2Regex.Matches(piece))
            {
                if (m.Length > 0)
                {
                    output.Add(ByteLevelAlphabet.Encode(m.Value));
                }
            }
        }
    }

    private sealed class SplitPreTokenizer(Regex pattern, string behavior) : HfPreTokenizer
    {
        public override void Split(string piece, List<string> output)
        {
            int last = 0;
            string? carry = null; // a match waiting to be glued to the next piece (MergedWithNext)
            foreach (Match m in pattern.Matches(piece))
            {
                if (m.Length == 0)
                {
                    continue;
                }

                string before = piece[last..m.Index];
                switch (behavior)
                {
                    case "Isolated":
                        AddNonEmpty(output, before);
                        output.Add(m.Value);
                        break;
                    case "Removed":
                        AddNonEmpty(output, before);
                        break;
                    case "MergedWithPrevious":
                        output.Add(before + m.Value);
                        break;
                    default:
                        AddNonEmpty(output, carry + before);
                        carry = m.Value;
                        break;
                }

                last = m.Index + m.Length;
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
