using System.Text.Json.Nodes;
using PetalsSharp.Text.Tokenizers;
using Xunit;

namespace PetalsSharp.Tests.Text;

/// <summary>
/// Pre-tokenizers of other byte-level families (Falcon, BLOOM) on the GPT-2 vocabulary: the expected ids are GPT-2's
/// ids for each piece the pre-tokenizer should produce, encoded on its own.
/// </summary>
public class PreTokenizerTests : IClassFixture<ByteLevelTokenizerTests.Gpt2Dirs>
{
    private readonly ByteLevelTokenizerTests.Gpt2Dirs _dirs;

    public PreTokenizerTests(ByteLevelTokenizerTests.Gpt2Dirs dirs) => _dirs = dirs;

    [Fact]
    public void FalconStyle_PunctuationDigitsAndThreeDigitSplit()
    {
        var falcon = WithPreTokenizer("""
            {"type": "Sequence", "pretokenizers": [
              {"type": "Punctuation", "behavior": "Contiguous"},
              {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
              {"type": "Digits", "individual_digits": false},
              {"type": "Split", "pattern": {"Regex": "[0-9][0-9][0-9]"}, "behavior": "Isolated", "invert": false}]}
            """);
        Assert.Equal(Pieces("Hi", "!!!", " ", "123", "45", "$", "x"), falcon.Encode("Hi!!! 12345$x"));
        Assert.Equal("Hi!!! 12345$x", falcon.Decode(falcon.Encode("Hi!!! 12345$x")));
    }

    [Fact]
    public void BloomStyle_NestedClassRegex_IsFlattened()
    {
        const string bloomPattern = " ?[^(\\s|[.,!?…。，、।۔،])]+";
        Assert.Equal(" ?[^(\\s|.,!?…。，、।۔،)]+", HfJson.FlattenNestedClasses(bloomPattern));
        var bloom = WithPreTokenizer($$"""
            {"type": "Sequence", "pretokenizers": [
              {"type": "Split", "pattern": {"Regex": {{JsonValue.Create(bloomPattern).ToJsonString()}}}, "behavior": "Isolated", "invert": false},
              {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}
            """);
        Assert.Equal(Pieces("Hello", ",", " world", "!", " ", " it's"), bloom.Encode("Hello, world!  it's"));
    }

    [Fact]
    public void SplitBehaviors_MergeMatchesAsHfDoes()
    {
        var previous = WithPreTokenizer("""{"type": "Split", "pattern": {"String": "-"}, "behavior": "MergedWithPrevious", "invert": false}""");
        var next = WithPreTokenizer("""{"type": "Split", "pattern": {"String": "-"}, "behavior": "MergedWithNext", "invert": false}""");
        var removed = WithPreTokenizer("""{"type": "Split", "pattern": {"String": "-"}, "behavior": "Removed", "invert": false}""");
        // Without a ByteLevel step nothing is mapped to bytes; ASCII letters and '-' are GPT-2 tokens all the same.
        var bytes = WithPreTokenizer("""{"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}""");
        Assert.Equal(bytes.Encode("a-").Concat(bytes.Encode("b-")).Concat(bytes.Encode("c")), previous.Encode("a-b-c"));
        Assert.Equal(bytes.Encode("a").Concat(bytes.Encode("-b")).Concat(bytes.Encode("-c")), next.Encode("a-b-c"));
        Assert.Equal(bytes.Encode("a").Concat(bytes.Encode("b")), removed.Encode("a--b"));
    }

    private IEnumerable<int> Pieces(params string[] pieces)
    {
        var gpt2 = TokenizerLoader.Load(_dirs.Full);
        return pieces.SelectMany(p => gpt2.Encode(p));
    }

    private ITextTokenizer WithPreTokenizer(string preTokenizerJson)
    {
        var root = JsonNode.Parse(File.ReadAllText(Path.Combine(_dirs.Full, "tokenizer.json")))!;
        root["pre_tokenizer"] = JsonNode.Parse(preTokenizerJson);
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
