using System.Text.Json;
using PetalsSharp.Text.Tokenizers;
using Xunit;

namespace PetalsSharp.Tests.Text;

/// <summary>
/// The stories260K tokenizer in both formats against the ids and texts that <c>transformers</c> and llama2.c produced.
/// </summary>
public class Stories260KTokenizerTests
{
    /// <summary>ASCII, digits, punctuation, tabs, newlines, accents, Japanese, emoji and awkward spacing.</summary>
    public static readonly string[] TrickyStrings =
    [
        "Hello world",
        "Once upon a time, there was a little girl.",
        "12345 67890",
        "3.14159 + 2 = 5.14",
        "Hello, world! How's it going? (fine) [ok] {x} #1 @me",
        "tab\there\tand\tthere",
        "line1\nline2\n\nline4",
        "windows\r\nline",
        "café naïve résumé",
        "Ünïcödé Ça Œuvre",
        "日本語のテキスト",
        "こんにちは世界",
        "emoji 😀🎉 test",
        "👍🏽",
        " leading space",
        "trailing space ",
        "double  space   triple",
        "   ",
        "",
    ];

    public static TheoryData<TokenizerFormat> Formats => new() { TokenizerFormat.SentencePiece, TokenizerFormat.HfJson };

    [SkippableTheory]
    [MemberData(nameof(Formats))]
    public void Continuations_MatchReferenceIdsAndText(TokenizerFormat format)
    {
        var tokenizer = Load(format);
        Assert.Equal(1, tokenizer.BosId);
        Assert.Equal(2, tokenizer.EosId);
        Assert.True(tokenizer.AddBos);
        Assert.Equal(512, tokenizer.VocabSize);

        using var reference = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(Fixtures.Stories260KDir!, "reference.json")));
        var continuations = reference.RootElement.GetProperty("continuations").EnumerateArray().ToList();
        Assert.Equal(3, continuations.Count);
        foreach (var c in continuations)
        {
            string prompt = c.GetProperty("prompt").GetString()!;
            Assert.Equal(Ints(c, "prompt_ids"), tokenizer.Encode(prompt));
            Assert.Equal(Ints(c, "prompt_ids"), tokenizer.Encode(prompt, addBos: true));
            Assert.Equal(Ints(c, "prompt_ids").Skip(1), tokenizer.Encode(prompt, addBos: false));
            Assert.Equal(c.GetProperty("new_text").GetString(), tokenizer.Decode(Ints(c, "new_token_ids")));
            Assert.Equal(c.GetProperty("full_text").GetString(), tokenizer.Decode(Ints(c, "sequence_ids")));
        }
    }

    [SkippableFact]
    public void BothFormats_GiveIdenticalIds_AndRoundTrip()
    {
        var sp = Load(TokenizerFormat.SentencePiece);
        var json = Load(TokenizerFormat.HfJson);
        Assert.IsType<SentencePieceTokenizer>(sp);
        Assert.IsType<HfJsonTokenizer>(json);
        foreach (string text in TrickyStrings)
        {
            var spIds = sp.Encode(text, addBos: false);
            var jsonIds = json.Encode(text, addBos: false);
            Assert.True(spIds.SequenceEqual(jsonIds), $"ids differ for {Show(text)}: [{string.Join(",", spIds)}] vs [{string.Join(",", jsonIds)}]");
            Assert.Equal(text, sp.Decode(spIds));
            Assert.Equal(text, json.Decode(jsonIds));
        }
    }

    [SkippableFact]
    public void EqualScorePairs_MergeLeftmostFirst_AsSentencePieceDoes()
    {
        // "ooo" can merge as "oo"+"o" or "o"+"oo" with the same score; sentencepiece and llama2.c take the leftmost pair.
        foreach (var format in new[] { TokenizerFormat.SentencePiece, TokenizerFormat.HfJson })
        {
            var tokenizer = Load(format);
            var ids = tokenizer.Encode(".ooo", addBos: false);
            Assert.Equal(["▁", ".", "oo", "o"], ids.Select(id => tokenizer.TokenToString(id)));
        }
    }

    [SkippableFact]
    public void BothFormats_Agree_OnRandomText()
    {
        var sp = Load(TokenizerFormat.SentencePiece);
        var json = Load(TokenizerFormat.HfJson);
        string[] alphabet = ["a", "b", "e", "t", "h", "o", "l", " ", "  ", "\t", "\n", "\r", "é", "日", "😀", ".", ",", "!", "1", "Th", "the", "ing", "Lily"];
        var random = new Random(260);
        for (int n = 0; n < 2000; n++)
        {
            string text = string.Concat(Enumerable.Range(0, random.Next(0, 30)).Select(_ => alphabet[random.Next(alphabet.Length)]));
            var spIds = sp.Encode(text);
            var jsonIds = json.Encode(text);
            Assert.True(spIds.SequenceEqual(jsonIds), $"ids differ for {Show(text)}: [{string.Join(",", spIds)}] vs [{string.Join(",", jsonIds)}]");
            Assert.Equal(text, sp.Decode(spIds));
            Assert.Equal(text, json.Decode(jsonIds));
        }
    }

    [SkippableFact]
    public void TokenToString_ReturnsRawPieces()
    {
        foreach (var format in new[] { TokenizerFormat.SentencePiece, TokenizerFormat.HfJson })
        {
            var tokenizer = Load(format);
            Assert.Equal("<s>", tokenizer.TokenToString(1));
            Assert.Equal("<0x0A>", tokenizer.TokenToString(3 + 0x0A));
            Assert.StartsWith("▁", tokenizer.TokenToString(tokenizer.Encode("the", addBos: false)[0]));
            Assert.Null(tokenizer.TokenToString(512));
            Assert.Null(tokenizer.TokenToString(-1));
        }
    }

    [SkippableFact]
    public void Decode_KeepsSpecialTokensOnRequest_AndSkipsUnknownIds()
    {
        var json = Load(TokenizerFormat.HfJson);
        var ids = json.Encode("Once upon a time").Append(2).ToList();
        Assert.Equal("Once upon a time", json.Decode(ids));
        Assert.Equal("<s> Once upon a time</s>", json.Decode(ids, skipSpecialTokens: false));
        Assert.Equal("Once upon a time", json.Decode(ids.Append(100_000)));

        var sp = Load(TokenizerFormat.SentencePiece);
        Assert.Equal("Once upon a time", sp.Decode(ids.Append(100_000)));
        Assert.Contains("</s>", sp.Decode(ids, skipSpecialTokens: false));
    }

    [SkippableFact]
    public void HfJson_MatchesAddedTokensLiterally()
    {
        var json = Load(TokenizerFormat.HfJson);
        var ids = json.Encode("<s>Once upon</s>", addBos: false);
        Assert.Equal(1, ids[0]);
        Assert.Equal(2, ids[^1]);
        // As in HF legacy mode, the text after an added token is normalized on its own and gains "▁".
        Assert.Equal(json.Encode("Once upon", addBos: false), ids.Skip(1).Take(ids.Count - 2));
    }

    [SkippableFact]
    public void HfJson_AcceptsMergesWrittenAsArrays()
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        string dir = TempDir.Create();
        try
        {
            var root = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures.Stories260KDir!, "tokenizer.json")))!;
            var merges = root["model"]!["merges"]!.AsArray();
            var pairs = new System.Text.Json.Nodes.JsonArray();
            foreach (var m in merges)
            {
                var parts = m!.GetValue<string>().Split(' ');
                pairs.Add(new System.Text.Json.Nodes.JsonArray(parts[0], parts[1]));
            }

            root["model"]!["merges"] = pairs;
            File.WriteAllText(Path.Combine(dir, "tokenizer.json"), root.ToJsonString());
            var arrays = TokenizerLoader.Load(dir);
            var reference = Load(TokenizerFormat.HfJson);
            foreach (string text in TrickyStrings)
            {
                Assert.Equal(reference.Encode(text), arrays.Encode(text));
            }

            // Without tokenizer_config.json the BOS rule comes from the post-processor template.
            Assert.True(arrays.AddBos);
            Assert.Equal(1, arrays.BosId);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static ITextTokenizer Load(TokenizerFormat format)
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        return TokenizerLoader.Load(Fixtures.Stories260KDir!, format);
    }

    private static int[] Ints(JsonElement e, string name) => e.GetProperty(name).EnumerateArray().Select(x => x.GetInt32()).ToArray();

    private static string Show(string s) => JsonSerializer.Serialize(s);
}
