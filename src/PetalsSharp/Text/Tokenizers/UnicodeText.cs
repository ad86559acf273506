using System.Globalization;
using System.Text.RegularExpressions;

namespace PetalsSharp.Text.Tokenizers;

/// <summary>
/// Bridges .NET's UTF-16 strings and HF <c>tokenizers</c>, which works on Unicode scalar values (Rust <c>str</c>).
/// </summary>
internal static class UnicodeText
{
    // One BMP stand-in per general category, indexed by UnicodeCategory. Whitespace never stands in, since patterns
    // treat \s apart and no supplementary code point is whitespace; nor does Latin-1, which patterns name literally.
    private static readonly char[] Placeholders = BuildPlaceholders();

    /// <summary>
    /// Replaces every unpaired surrogate with U+FFFD, so that all encode paths see the same text. HF cannot receive
    /// such text at all (Rust strings are valid UTF-8; its .NET wrappers throw), and .NET's <c>string.Normalize</c>
    /// throws on it, so replacing is our documented choice. Returns <paramref name="text"/> itself when nothing changes.
    /// </summary>
    public static string ReplaceLoneSurrogates(string text)
    {
        int first = text.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF');
        if (first < 0)
        {
            return text;
        }

        char[]? copy = null;
        for (int i = first; i < text.Length; i++)
        {
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                i++;
            }
            else if (char.IsSurrogate(text[i]))
            {
                copy ??= text.ToCharArray();
                copy[i] = '\uFFFD';
            }
        }

        return copy is null ? text : new string(copy);
    }

    /// <summary>
    /// The matches of <paramref name="regex"/> in <paramref name="text"/> as HF finds them: each code point above
    /// U+FFFF counts as one character of its own general category.
    /// </summary>
    /// <remarks>
    /// .NET tests <c>\p{L}</c>, <c>\p{N}</c> and the like on UTF-16 code units, so a surrogate pair reads as two
    /// "other" characters: "𠮷's" would split as <c>𠮷'</c> + <c>s</c> where HF gives <c>𠮷</c> + <c>'s</c>, and an
    /// optional class such as <c>[^\r\n\p{L}\p{N}]?</c> could take half an emoji. So the regex runs over a copy in
    /// which each such code point is one BMP character of the same category, and offsets are mapped back. A pattern
    /// that names supplementary characters literally would not see them; no tokenizer we know of does.
    /// </remarks>
    public static IEnumerable<(int Index, int Length)> Matches(Regex regex, string text)
    {
        if (text.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF') < 0)
        {
            foreach (Match m in regex.Matches(text))
            {
                yield return (m.Index, m.Length);
            }

            yield break;
        }

        string folded = Fold(text, out int[] starts);
        foreach (Match m in regex.Matches(folded))
        {
            int start = starts[m.Index];
            yield return (start, starts[m.Index + m.Length] - start);
        }
    }

    /// <summary>The stand-in used for supplementary code points of <paramref name="category"/>.</summary>
    internal static char Placeholder(UnicodeCategory category) => Placeholders[(int)category];

    /// <summary>
    /// Copies <paramref name="text"/> with each surrogate pair replaced by its category's stand-in;
    /// <paramref name="starts"/>[k] is where folded character k starts in the original (with one extra entry for the end).
    /// </summary>
    internal static string Fold(string text, out int[] starts)
    {
        var chars = new char[text.Length];
        starts = new int[text.Length + 1];
        int n = 0;
        for (int i = 0; i < text.Length; i++)
        {
            starts[n] = i;
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                int codePoint = char.ConvertToUtf32(text[i], text[i + 1]);
                chars[n++] = Placeholders[(int)CharUnicodeInfo.GetUnicodeCategory(codePoint)];
                i++;
            }
            else
            {
                chars[n++] = text[i];
            }
        }

        starts[n] = text.Length;
        Array.Resize(ref starts, n + 1);
        return new string(chars, 0, n);
    }

    private static char[] BuildPlaceholders()
    {
        int count = Enum.GetValues<UnicodeCategory>().Length;
        var map = new char[count];
        Array.Fill(map, '\uFFFD');
        var found = new bool[count];
        for (int c = 0x100; c <= 0xFFFF; c++)
        {
            char ch = (char)c;
            int category = (int)CharUnicodeInfo.GetUnicodeCategory(ch);
            if (!found[category] && !char.IsSurrogate(ch) && !char.IsWhiteSpace(ch))
            {
                map[category] = ch;
                found[category] = true;
            }
        }

        return map;
    }
}
