using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Encodings.Web;
using System.Text.Json;
using PetalsSharp.Text.Tokenizers;
using Xunit;
using Xunit.Abstractions;

namespace PetalsSharp.Tests.Text;

/// <summary>
/// Pins our <c>tokenizer.json</c> reader to HF <c>tokenizers</c> (Rust, through Tokenizers.DotNet): every tokenizer we
/// can read must give the same ids and the same decoded text on <see cref="ReferenceCorpus"/>.
/// </summary>
/// <remarks>
/// The library always adds special tokens when encoding and always skips them when decoding, so it is compared with
/// our default encode (BOS as the file says) and default decode. It rejects unpaired surrogates, which we encode as
/// U+FFFD; those are compared with HF on the replaced text.
/// </remarks>
public class HfTokenizersReferenceTests : IClassFixture<ReferenceTokenizers>
{
    private const string Stories260K = "stories260K";

    private static readonly List<string> Corpus = ReferenceCorpus.Build();

    private static readonly JsonSerializerOptions Escaped = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    private readonly ReferenceTokenizers _tokenizers;
    private readonly ITestOutputHelper _output;

    public HfTokenizersReferenceTests(ReferenceTokenizers tokenizers, ITestOutputHelper output)
    {
        _tokenizers = tokenizers;
        _output = output;
    }

    public static TheoryData<string> Tokenizers()
    {
        var data = new TheoryData<string> { Stories260K };
        foreach (string name in ReferenceTokenizers.Names)
        {
            data.Add(name);
        }

        return data;
    }

    [SkippableTheory]
    [MemberData(nameof(Tokenizers))]
    public void EncodeAndDecode_MatchHfTokenizers(string name)
    {
        var (hf, ours) = _tokenizers.Load(Folder(name));
        var hfWatch = new Stopwatch();
        var ourWatch = new Stopwatch();

        var failures = new List<string>();
        var cases = Corpus.Select(text => ("corpus", text, text))
            .Concat(ReferenceCorpus.Hard().Select(h => (h.Label, h.Text, h.Text)))
            .Concat(ReferenceCorpus.LoneSurrogates());
        int count = 0;
        foreach (var (label, text, hfText) in cases)
        {
            count++;
            hfWatch.Start();
            int[] expected = hf.Encode(hfText).Select(id => (int)id).ToArray();
            hfWatch.Stop();
            ourWatch.Start();
            var actual = ours.Encode(text);
            ourWatch.Stop();
            if (!expected.SequenceEqual(actual))
            {
                failures.Add($"encode {label} {Show(text)}\n  hf   [{string.Join(',', expected)}]\n  ours [{string.Join(',', actual)}]");
            }

            string hfDecoded = hf.Decode(expected.Select(id => (uint)id).ToArray());
            string ourDecoded = ours.Decode(expected);
            if (hfDecoded != ourDecoded)
            {
                failures.Add($"decode {label} {Show(text)}\n  hf   {Show(hfDecoded)}\n  ours {Show(ourDecoded)}");
            }
        }

        _output.WriteLine($"{name}: {count} strings; encoding took HF {hfWatch.ElapsedMilliseconds} ms, ours {ourWatch.ElapsedMilliseconds} ms");
        Assert.True(failures.Count == 0, $"{name}: {failures.Count} differences from HF tokenizers, first ones:\n{First(failures)}");
    }

    [SkippableTheory]
    [MemberData(nameof(Tokenizers))]
    public void DecodeOfSingleAndRandomIds_MatchesHfTokenizers(string name)
    {
        var (hf, ours) = _tokenizers.Load(Folder(name));
        var watch = Stopwatch.StartNew();

        // Single ids are what streaming decodes see; random runs mix partial UTF-8, specials and word boundaries.
        var random = new Random(99);
        var runs = Enumerable.Range(0, 2000)
            .Select(_ => Enumerable.Range(0, random.Next(1, 12)).Select(_ => random.Next(ours.VocabSize)).ToArray());
        var sequences = Enumerable.Range(0, ours.VocabSize).Select(id => new[] { id }).Concat(runs);
        var failures = new List<string>();
        foreach (int[] ids in sequences)
        {
            string expected = hf.Decode(ids.Select(id => (uint)id).ToArray());
            string actual = ours.Decode(ids);
            if (expected != actual)
            {
                failures.Add($"[{string.Join(',', ids)}]: hf {Show(expected)} ours {Show(actual)}");
            }
        }

        _output.WriteLine($"{name}: {ours.VocabSize} single ids + 2000 runs in {watch.ElapsedMilliseconds} ms");
        Assert.True(failures.Count == 0, $"{name}: {failures.Count} decodes differ from HF tokenizers, first ones:\n{First(failures)}");
    }

    private string Folder(string name)
    {
        // The package ships only the linux-x64 build of the native library.
        Skip.IfNot(
            OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == System.Runtime.InteropServices.Architecture.X64,
            "Tokenizers.DotNet is referenced for linux-x64 only");
        if (name != Stories260K)
        {
            // The Metaspace folders are built on stories260K's vocabulary.
            Skip.IfNot(Directory.Exists(_tokenizers.Dir(name)), Fixtures.Stories260KSkipReason);
            return _tokenizers.Dir(name);
        }

        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        return Fixtures.Stories260KDir!;
    }

    private static string Show(string text) => JsonSerializer.Serialize(text, Escaped);

    private static string First(List<string> failures) => string.Join('\n', failures.Take(8));
}
