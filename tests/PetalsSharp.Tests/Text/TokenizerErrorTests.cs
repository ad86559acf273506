using PetalsSharp.Text.Tokenizers;
using Xunit;

namespace PetalsSharp.Tests.Text;

public class TokenizerErrorTests : IDisposable
{
    private readonly string _dir = TempDir.Create();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void MissingTokenizerFiles_NameTheFolder()
    {
        var ex = Assert.Throws<FileNotFoundException>(() => TokenizerLoader.Load(_dir));
        Assert.Contains(_dir, ex.Message);
        Assert.Contains("tokenizer.json", ex.Message);
        Assert.Contains("tokenizer.model", ex.Message);
    }

    [Fact]
    public void ExplicitFormat_RequiresThatFile()
    {
        File.WriteAllText(Path.Combine(_dir, "tokenizer.json"), "{}");
        var ex = Assert.Throws<FileNotFoundException>(() => TokenizerLoader.Load(_dir, TokenizerFormat.SentencePiece));
        Assert.Contains("tokenizer.model", ex.Message);
    }

    [Fact]
    public void UnsupportedModelType_IsNamed()
    {
        Write("""{"model": {"type": "WordPiece", "vocab": {"a": 0}}}""");
        var ex = Assert.Throws<NotSupportedException>(() => TokenizerLoader.Load(_dir));
        Assert.Contains("WordPiece", ex.Message);
        Assert.Contains("model type", ex.Message);
        Assert.Contains(Path.Combine(_dir, "tokenizer.json"), ex.Message);
    }

    [Fact]
    public void UnsupportedNormalizer_IsNamed()
    {
        Write("""{"normalizer": {"type": "BertNormalizer"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}""");
        var ex = Assert.Throws<NotSupportedException>(() => TokenizerLoader.Load(_dir));
        Assert.Contains("normalizer 'BertNormalizer'", ex.Message);
        Assert.Contains("tokenizer.json", ex.Message);
    }

    [Fact]
    public void UnsupportedPreTokenizer_IsNamed()
    {
        Write("""{"pre_tokenizer": {"type": "BertPreTokenizer"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}""");
        var ex = Assert.Throws<NotSupportedException>(() => TokenizerLoader.Load(_dir));
        Assert.Contains("pre_tokenizer 'BertPreTokenizer'", ex.Message);
    }

    [Fact]
    public void MalformedJson_IsReported()
    {
        Write("{ \"model\": { not json");
        var ex = Assert.Throws<InvalidDataException>(() => TokenizerLoader.Load(_dir));
        Assert.Contains("not valid JSON", ex.Message);
        Assert.Contains(Path.Combine(_dir, "tokenizer.json"), ex.Message);
    }

    [Fact]
    public void MissingModel_IsReported()
    {
        Write("""{"version": "1.0"}""");
        var ex = Assert.Throws<InvalidDataException>(() => TokenizerLoader.Load(_dir));
        Assert.Contains("'model'", ex.Message);
    }

    [Fact]
    public void CorruptSentencePieceModel_IsReported()
    {
        File.WriteAllText(Path.Combine(_dir, "tokenizer.model"), "not a protobuf");
        var ex = Assert.Throws<InvalidDataException>(() => TokenizerLoader.Load(_dir));
        Assert.Contains("tokenizer.model", ex.Message);
    }

    [Fact]
    public void SmallBpe_WithoutDecoderOrPreTokenizer_Works()
    {
        Write("""
            {"added_tokens": [{"id": 3, "content": "<eos>", "special": true}],
             "model": {"type": "BPE", "unk_token": "?", "fuse_unk": true, "vocab": {"a": 0, "b": 1, "ab": 2, "?": 4}, "merges": ["a b"]}}
            """);
        var t = TokenizerLoader.Load(_dir);
        Assert.False(t.AddBos);
        Assert.Null(t.BosId);
        Assert.Equal([2, 0, 4, 2, 3], t.Encode("abaxyab<eos>"));
        Assert.Equal("ab a ? ab", t.Decode([2, 0, 4, 2, 3]));
        Assert.Equal(5, t.VocabSize);
    }

    private void Write(string json) => File.WriteAllText(Path.Combine(_dir, "tokenizer.json"), json);
}
