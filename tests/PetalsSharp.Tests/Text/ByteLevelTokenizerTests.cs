using System.Text.Json.Nodes;
using Microsoft.ML.Tokenizers;
using PetalsSharp.Text.Tokenizers;
using Xunit;

namespace PetalsSharp.Tests.Text;

/// <summary>Byte-level BPE (GPT-2 / Llama 3 style) through <see cref="Gpt2TokenizerFiles"/> and <see cref="HfJsonTokenizer"/>.</summary>
public class ByteLevelTokenizerTests : IClassFixture<ByteLevelTokenizerTests.Gpt2Dirs>
{
    public static readonly string[] Samples =
    [
        "Hello world",
        "It's 2024; we've got 1234567 items, they'll say I'm done and you'd agree.",
        "don't won't can't shouldn't",
        "  multiple   spaces   between  ",
        "tabs\tand\nnewlines\n\n\r\nend",
        "Unicode: café, naïve, Ünïcödé, 日本語のテキスト",
        "emoji 😀🎉👍🏽 done",
        "Numbers 3.14159, -42 and 1e-9",
        "email@example.com http://x.y/z?q=1&r=2",
        "CamelCaseWordsAndALLCAPS mixed123abc456",
        "\n\n\nleading newlines and trailing space ",
        "Ελληνικά и русский текст",
    ];

    private readonly Gpt2Dirs _dirs;

    public ByteLevelTokenizerTests(Gpt2Dirs dirs) => _dirs = dirs;

    [Fact]
    public void FullVocab_MatchesTiktokenGpt2()
    {
        var ours = TokenizerLoader.Load(_dirs.Full);
        var tiktoken = TiktokenTokenizer.CreateForModel("gpt2");
        Assert.Equal(50257, ours.VocabSize);
        Assert.Equal(50256, ours.BosId);
        Assert.Equal(50256, ours.EosId);
        Assert.False(ours.AddBos);
        foreach (string text in Samples)
        {
            Assert.Equal(tiktoken.EncodeToIds(text), ours.Encode(text));
            Assert.Equal(text, ours.Decode(ours.Encode(text)));
        }

        Assert.Equal("Ġworld", ours.TokenToString(995));
        Assert.Equal([50256, 15496, 50256], ours.Encode("<|endoftext|>Hello<|endoftext|>"));
        Assert.Equal([50256, 15496], ours.Encode("Hello", addBos: true));
        Assert.Equal("Hello", ours.Decode([50256, 15496, 50256]));
        Assert.Equal("<|endoftext|>Hello", ours.Decode([50256, 15496], skipSpecialTokens: false));
    }

    [Fact]
    public void LargerModelVocab_LeavesIdsAboveEndOfTextUnused()
    {
        string dir = TempDir.Create();
        try
        {
            Gpt2TokenizerFiles.Write(dir, 50304);
            var tokenizer = TokenizerLoader.Load(dir);
            Assert.Equal(50257, tokenizer.VocabSize);
            Assert.Equal(50256, tokenizer.EosId);
            Assert.Equal("Hello", tokenizer.Decode([15496, 50300]));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void TruncatedVocab_StaysInRange_AndRoundTrips()
    {
        var tokenizer = TokenizerLoader.Load(_dirs.Truncated);
        Assert.Equal(1000, tokenizer.VocabSize);
        Assert.Equal(999, tokenizer.BosId);
        Assert.Equal(999, tokenizer.EosId);
        foreach (string text in Samples)
        {
            var ids = tokenizer.Encode(text);
            Assert.All(ids, id => Assert.InRange(id, 0, 998));
            Assert.Equal(text, tokenizer.Decode(ids));
        }

        Assert.Equal([999], tokenizer.Encode("<|endoftext|>"));
    }

    [Fact]
    public void ConcurrentEncoding_MatchesSequential()
    {
        var tokenizer = TokenizerLoader.Load(_dirs.Full);
        var texts = Enumerable.Range(0, 400).Select(i => Samples[i % Samples.Length] + " " + i).ToArray();
        var expected = texts.Select(t => tokenizer.Encode(t)).ToArray();
        var fresh = TokenizerLoader.Load(_dirs.Full);
        var actual = new IReadOnlyList<int>[texts.Length];
        Parallel.For(0, texts.Length, new ParallelOptions { MaxDegreeOfParallelism = 4 }, i => actual[i] = fresh.Encode(texts[i]));
        for (int i = 0; i < texts.Length; i++)
        {
            Assert.Equal(expected[i], actual[i]);
        }
    }

    [Fact]
    public void TooSmallVocab_IsRejected()
    {
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => Gpt2TokenizerFiles.Write(TempDir.Create(), 256));
        Assert.Contains("257", ex.Message);
    }

    [Fact]
    public void Llama3StyleSplit_AndBosTemplate_AreApplied()
    {
        const string llama3Pattern =
            @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        string dir = TempDir.Create();
        try
        {
            var root = JsonNode.Parse(File.ReadAllText(Path.Combine(_dirs.Full, "tokenizer.json")))!;
            root["pre_tokenizer"] = JsonNode.Parse($$"""
                {"type": "Sequence", "pretokenizers": [
                  {"type": "Split", "pattern": {"Regex": {{JsonValue.Create(llama3Pattern).ToJsonString()}}}, "behavior": "Isolated", "invert": false},
                  {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}
                """);
            root["added_tokens"]!.AsArray().Add(JsonNode.Parse(
                """{"id": 50257, "content": "<|begin_of_text|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}"""));
            root["post_processor"] = JsonNode.Parse("""
                {"type": "Sequence", "processors": [
                  {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
                  {"type": "TemplateProcessing",
                   "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                   "pair": [],
                   "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [50257], "tokens": ["<|begin_of_text|>"]}}}]}
                """);
            File.WriteAllText(Path.Combine(dir, "tokenizer.json"), root.ToJsonString());
            var llama3 = TokenizerLoader.Load(dir);
            var gpt2 = TokenizerLoader.Load(_dirs.Full);

            Assert.True(llama3.AddBos);
            Assert.Equal(50257, llama3.BosId);
            Assert.Equal(50258, llama3.VocabSize);
            // Llama 3 splits digits into groups of at most three, where GPT-2 keeps the run whole.
            var expected = new[] { 50257 }.Concat(gpt2.Encode("123")).Concat(gpt2.Encode("456")).Concat(gpt2.Encode("7"));
            Assert.Equal(expected, llama3.Encode("1234567"));
            // Case-insensitive contractions are split off.
            Assert.Equal(gpt2.Encode("I").Concat(gpt2.Encode("'LL")), llama3.Encode("I'LL", addBos: false));
            foreach (string text in Samples)
            {
                var ids = llama3.Encode(text);
                Assert.Equal(50257, ids[0]);
                Assert.Equal(text, llama3.Decode(ids));
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>Writes the GPT-2 derived tokenizers once per test class.</summary>
    public sealed class Gpt2Dirs : IDisposable
    {
        public Gpt2Dirs()
        {
            Full = TempDir.Create();
            Truncated = TempDir.Create();
            Gpt2TokenizerFiles.Write(Full, 50257);
            Gpt2TokenizerFiles.Write(Truncated, 1000);
        }

        public string Full { get; }

        public string Truncated { get; }

        public void Dispose()
        {
            Directory.Delete(Full, recursive: true);
            Directory.Delete(Truncated, recursive: true);
        }
    }
}
