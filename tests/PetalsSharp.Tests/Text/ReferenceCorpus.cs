using System.Text;

namespace PetalsSharp.Tests.Text;

/// <summary>
/// The strings our tokenizers are compared with HF <c>tokenizers</c> on: 3000 deterministic strings plus named hard cases.
/// Ported from the Tokenizers.DotNet evaluation (docs/tokenizers.md); changing a seed or a table changes what is checked.
/// </summary>
internal static class ReferenceCorpus
{
    // Stories260KTokenizerTests.TrickyStrings and ByteLevelTokenizerTests.Samples as they were when the corpus was made.
    private static readonly string[] Fixed =
    [
        "Hello world", "Once upon a time, there was a little girl.", "12345 67890", "3.14159 + 2 = 5.14",
        "Hello, world! How's it going? (fine) [ok] {x} #1 @me", "tab\there\tand\tthere", "line1\nline2\n\nline4", "windows\r\nline",
        "café naïve résumé", "Ünïcödé Ça Œuvre", "日本語のテキスト", "こんにちは世界", "emoji 😀🎉 test", "👍🏽", " leading space",
        "trailing space ", "double  space   triple", "   ", "",
        "It's 2024; we've got 1234567 items, they'll say I'm done and you'd agree.", "don't won't can't shouldn't",
        "  multiple   spaces   between  ", "tabs\tand\nnewlines\n\n\r\nend", "Unicode: café, naïve, Ünïcödé, 日本語のテキスト",
        "emoji 😀🎉👍🏽 done", "Numbers 3.14159, -42 and 1e-9", "email@example.com http://x.y/z?q=1&r=2",
        "CamelCaseWordsAndALLCAPS mixed123abc456", "\n\n\nleading newlines and trailing space ", "Ελληνικά и русский текст",
    ];

    // stories260K's training text is English children's stories: pieces its merges actually combine.
    private static readonly string[] StoryAlphabet =
        ["a", "b", "e", "t", "h", "o", "l", " ", "  ", "\t", "\n", "\r", "é", "日", "😀", ".", ",", "!", "1", "Th", "the", "ing", "Lily"];

    // Code point ranges for random text; ASCII is listed thrice to weight it. Includes combining marks, controls,
    // emoji and math alphanumerics (letters and digits above U+FFFF).
    private static readonly (int From, int To)[] Blocks =
    [
        (0x20, 0x7E), (0x20, 0x7E), (0x20, 0x7E), (0xA0, 0xFF), (0x100, 0x17F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF),
        (0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x3040, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0x300, 0x36F),
        (0x1F300, 0x1F64F), (0x1F900, 0x1F9FF), (0x2000, 0x206F), (0xFF01, 0xFF5E), (0x660, 0x669), (0x0, 0x1F), (0x1D400, 0x1D4FF),
    ];

    // Unusual whitespace, joiners, contractions and the added tokens of the tokenizers under test.
    private static readonly string[] Specials =
    [
        "\u200D", "\uFE0F", "\u00A0", "\u2003", "\u3000", "\u2028", "\u0085", "\v", "\f", "\r\n", "’", "'S", "'LL", "'ve", "\u0301",
        "<s>", "</s>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<unk>", "   ", "\n\n", "\t\t",
    ];

    private static readonly string[] Words =
    [
        "the", "The", "little", "girl", "Lily", "dog", "ran", "to", "park", "and", "played", "with", "ball", "Once", "upon", "a", "time",
        "there", "was", "happy", "She", "he", "said", "\"Hello!\"", "it's", "don't", "I'm", "we'll", "you're", "3", "42", "2024",
        "1234567890", "3.14", "-7", "$100", "50%", "e.g.", "U.S.A.", "www.example.org/path?x=1", "user@mail.com", "C++", "x86_64",
        "foo_bar", "camelCase", "HTTPServer", "naïve", "Zürich", "東京", "Москва", "مرحبا", "שלום", "नमस्ते", "😀", "👨‍👩‍👧", "🇯🇵",
        "(parens)", "[brackets]", "{braces}", "a->b", "x==y", "#tag", "...", "—", "–", "«quoted»", "„low“",
    ];

    private static readonly string[] Joiners = [" ", " ", " ", " ", "  ", ", ", ". ", "\n", "\n\n", "\t", " \n", "   ", "!", "? ", ""];

    /// <summary>
    /// 3000 strings: the fixed samples, story-like strings up to 2000, random Unicode up to 2000, word salad up to 3000.
    /// </summary>
    public static List<string> Build()
    {
        var list = new List<string>(Fixed);
        var stories = new Random(260);
        for (int n = 0; n < 1000; n++)
        {
            int length = stories.Next(0, 30);
            list.Add(string.Concat(Enumerable.Range(0, length).Select(_ => StoryAlphabet[stories.Next(StoryAlphabet.Length)])));
        }

        var unicode = new Random(12345);
        while (list.Count < 2000)
        {
            var sb = new StringBuilder();
            int length = unicode.Next(1, 40);
            for (int i = 0; i < length; i++)
            {
                if (unicode.Next(8) == 0)
                {
                    sb.Append(Specials[unicode.Next(Specials.Length)]);
                    continue;
                }

                var (from, to) = Blocks[unicode.Next(Blocks.Length)];
                int cp = unicode.Next(from, to + 1);
                if (cp is < 0xD800 or > 0xDFFF)
                {
                    sb.Append(char.ConvertFromUtf32(cp));
                }
            }

            list.Add(sb.ToString());
        }

        var words = new Random(777);
        while (list.Count < 3000)
        {
            var sb = new StringBuilder();
            int length = words.Next(1, 60);
            for (int i = 0; i < length; i++)
            {
                sb.Append(Words[words.Next(Words.Length)]);
                sb.Append(Joiners[words.Next(Joiners.Length)]);
            }

            list.Add(sb.ToString());
        }

        return list;
    }

    /// <summary>Named hard cases, all valid UTF-16 (HF cannot take unpaired surrogates; see <see cref="LoneSurrogates"/>).</summary>
    public static List<(string Label, string Text)> Hard() =>
    [
        ("1000 spaces", new string(' ', 1000)),
        ("500 newlines", new string('\n', 500)),
        ("mixed ws runs", "a \t \n  \r\n\n\t\tb   \u00A0\u3000 c\u2028d"),
        ("40 digits", "1234567890123456789012345678901234567890"),
        ("fullwidth/arabic digits", "１２３ ٠١٢٣٤ 12,345.678"),
        ("ZWJ family + flags + skin", "👨‍👩‍👧‍👦 🏳️‍🌈 🇺🇸🇯🇵 👍🏿 ❤️"),
        ("combining marks", "e\u0301 a\u0308\u0304 Z\u0351\u0352\u0353"),
        ("NFC-sensitive (decomposed é)", "cafe\u0301 vs café"),
        ("NUL and controls", "a\0b\u0001c\u001bd\u007f"),
        ("BOM inside", "\uFEFFhello\uFEFF"),
        ("RTL + LTR", "abc مرحبا بالعالم def שלום"),
        ("uppercase contractions", "I'M SURE YOU'LL SEE IT'S FINE, WE'VE DONE IT"),
        ("curly apostrophes", "it’s they’re we’ve"),
        ("special tokens inline", "<s>Hi</s> <|endoftext|>x<|im_start|>user\nhi<|im_end|>"),
        ("special token at start", "<|begin_of_text|>Hello"),
        ("Mistral instructions", "[INST] Hello there [/INST] Hi! [INST]again[/INST]"),
        ("Mistral instruction at start, no space", "[INST]x  y [/INST]"),
        (" leading spaces then instruction", "  hi [INST] yo"),
        ("broken special", "<|endoftext|<s <|im_start|"),
        ("code", "def f(x):\n    return x**2  # square\n\n\nclass A:\n\tpass\n"),
        ("long word", string.Concat(Enumerable.Repeat("supercalifragilistic", 50))),
        ("astral letters (CJK Ext-B, math)", "𠮷's 𝐀𝐁𝐂's 𝑝'll 𝟏𝟐𝟑 𐍈x"),
        ("astral letter then space", "𠮷 野家 𝒜 b"),
        ("emoji before letters", "😀abc 🎉Ünï 𝟏𝟐𝟑𝟒x"),
    ];

    /// <summary>Unpaired surrogates with the text HF is given instead: ours must encode them as U+FFFD.</summary>
    public static List<(string Label, string Text, string Replaced)> LoneSurrogates() =>
    [
        ("lone high surrogate", "ab\uD800cd", "ab\uFFFDcd"),
        ("lone low surrogate", "ab\uDC00cd", "ab\uFFFDcd"),
        ("reversed pair", "x\uDE00\uD83Dy", "x\uFFFD\uFFFDy"),
        ("trailing high surrogate", "end\uD83D", "end\uFFFD"),
    ];
}
