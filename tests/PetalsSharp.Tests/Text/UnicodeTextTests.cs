using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using PetalsSharp.Text.Tokenizers;
using Xunit;

namespace PetalsSharp.Tests.Text;

/// <summary>
/// Text HF handles by Unicode scalar value where .NET sees UTF-16 code units: letters and digits above U+FFFF in the
/// regex pre-tokenizers and normalizers, and unpaired surrogates, which every encode path turns into U+FFFD.
/// </summary>
public class UnicodeTextTests : IClassFixture<ByteLevelTokenizerTests.Gpt2Dirs>
{
    private const string Llama3Pattern =
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// <summary>Unpaired surrogates (as input) and what they must encode like.</summary>
    private static readonly (string Input, string Expected)[] LoneSurrogates =
    [
        ("ab\uD800cd", "ab\uFFFDcd"),
        ("ab\uDC00cd", "ab\uFFFDcd"),
        ("x\uDE00\uD83Dy", "x\uFFFD\uFFFDy"),
        ("end\uD83D", "end\uFFFD"),
        ("\uDFFF😀\uD83D", "\uFFFD😀\uFFFD"),
    ];

    private readonly ByteLevelTokenizerTests.Gpt2Dirs _dirs;

    public UnicodeTextTests(ByteLevelTokenizerTests.Gpt2Dirs dirs) => _dirs = dirs;

    // A Fact, not a Theory: xunit gives rows that differ only in a lone surrogate the same test id.
    [Fact]
    public void ReplaceLoneSurrogates_ReplacesOnlyUnpairedHalves()
    {
        foreach (var (input, expected) in LoneSurrogates)
        {
            Assert.Equal(expected, UnicodeText.ReplaceLoneSurrogates(input));
        }
    }

    [Fact]
    public void ReplaceLoneSurrogates_ReturnsValidTextAsIs()
    {
        foreach (string text in new[] { "", "plain", "emoji 😀🎉 𠮷's" })
        {
            Assert.Same(text, UnicodeText.ReplaceLoneSurrogates(text));
        }
    }

    [Fact]
    public void Placeholders_HaveTheCategoryOfEverySupplementaryCodePoint()
    {
        var categories = new HashSet<UnicodeCategory>();
        for (int cp = 0x10000; cp <= 0x10FFFF; cp++)
        {
            categories.Add(CharUnicodeInfo.GetUnicodeCategory(cp));
        }

        foreach (var category in categories)
        {
            char placeholder = UnicodeText.Placeholder(category);
            Assert.Equal(category, CharUnicodeInfo.GetUnicodeCategory(placeholder));
            Assert.False(char.IsWhiteSpace(placeholder));
            Assert.True(placeholder >= 0x100, $"{category} stands in with Latin-1 '{placeholder}'");
        }
    }

    [Fact]
    public void Fold_MapsOffsetsBack()
    {
        string folded = UnicodeText.Fold("a𠮷b😀", out int[] starts);
        Assert.Equal(4, folded.Length);
        Assert.Equal([0, 1, 3, 4, 6], starts);
        Assert.Equal(UnicodeCategory.OtherLetter, CharUnicodeInfo.GetUnicodeCategory(folded[1]));
        Assert.Equal(UnicodeCategory.OtherSymbol, CharUnicodeInfo.GetUnicodeCategory(folded[3]));
    }

    [Fact]
    public void Gpt2ByteLevel_TreatsAstralLettersAsLetters()
    {
        var pre = PreTokenizer("""{"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}""");
        // HF: the contraction after a CJK Ext-B or math letter is its own piece, and the letter run stays whole.
        Assert.Equal(Mapped("𠮷", "'s", " 𝐀𝐁𝐂", "'s", " 𝑝", "'ll", " 𝟏𝟐𝟑", " 𐍈x"), pre.Run("𠮷's 𝐀𝐁𝐂's 𝑝'll 𝟏𝟐𝟑 𐍈x"));

        var gpt2 = TokenizerLoader.Load(_dirs.Full);
        Assert.Equal(gpt2.Encode("𠮷").Concat(gpt2.Encode("'s")), gpt2.Encode("𠮷's"));
        Assert.Contains(338, gpt2.Encode("𠮷's")); // "'s", as HF tokenizers gives
    }

    [Fact]
    public void Llama3Split_SeesOneCharacterPerCodePoint()
    {
        string pattern = JsonValue.Create(Llama3Pattern).ToJsonString();
        var pre = PreTokenizer($$"""{"type": "Split", "pattern": {"Regex": {{pattern}}}, "behavior": "Isolated", "invert": false}""");
        // An emoji before letters is the optional prefix character as a whole, never half of it; digit groups of
        // three count math digits as one digit each.
        Assert.Equal(["😀abc", " 𠮷", "'s", " ", "𝟏𝟐𝟑", "𝟒", " x"], pre.Run("😀abc 𠮷's 𝟏𝟐𝟑𝟒 x"));
    }

    [Fact]
    public void ReplaceNormalizer_RegexSeesAstralLetters()
    {
        var normalizer = HfNormalizer.Parse(JsonDocument.Parse("""
            {"type": "Replace", "pattern": {"Regex": "\\p{L}+"}, "content": "$0"}
            """).RootElement, "test")!;
        Assert.Equal("$0 $0.😀", normalizer.Apply("a𠮷b 𝑝.😀"));
        Assert.Equal("...", normalizer.Apply("..."));
    }

    [Theory]
    [InlineData("""{"type": "NFC"}""")]
    [InlineData("""{"type": "NFKD"}""")]
    [InlineData("""{"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]}""")]
    [InlineData("""{"type": "Replace", "pattern": {"Regex": "\\s"}, "content": "_"}""")]
    [InlineData("null")]
    public void LoneSurrogates_EncodeAsReplacementCharacter_WhateverTheNormalizer(string normalizerJson)
    {
        var root = JsonNode.Parse(File.ReadAllText(Path.Combine(_dirs.Full, "tokenizer.json")))!;
        root["normalizer"] = JsonNode.Parse(normalizerJson);
        var tokenizer = Load(root);
        foreach (var (input, expected) in LoneSurrogates)
        {
            Assert.Equal(tokenizer.Encode(expected), tokenizer.Encode(input));
            Assert.Equal(expected, tokenizer.Decode(tokenizer.Encode(input)));
        }
    }

    [SkippableTheory]
    [InlineData(TokenizerFormat.SentencePiece)]
    [InlineData(TokenizerFormat.HfJson)]
    public void LoneSurrogates_EncodeAsReplacementCharacter_InSentencePieceModels(TokenizerFormat format)
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        var tokenizer = TokenizerLoader.Load(Fixtures.Stories260KDir!, format);
        foreach (var (input, expected) in LoneSurrogates)
        {
            Assert.Equal(tokenizer.Encode(expected), tokenizer.Encode(input));
        }
    }

    private static HfPreTokenizer PreTokenizer(string json) => HfPreTokenizer.Parse(JsonDocument.Parse(json).RootElement, "test")!;

    private static string[] Mapped(params string[] pieces) => pieces.Select(p => ByteLevelAlphabet.Encode(p)).ToArray();

    private static ITextTokenizer Load(JsonNode root)
    {
        string dir = TempDir.Create();
        try
        {
            File.WriteAllText(Path.Combine(dir, "tokenizer.json"), root.ToJsonString());
            return TokenizerLoader.Load(dir);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
