using System.Text.Json;
using PetalsSharp.Models.Weights;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Weights;

/// <summary>A temporary directory deleted with the test.</summary>
internal sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "petals-st-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
            // Best effort: a leaked temp dir must not fail the test that made it.
        }
    }
}

internal static class SafeTensorsTestSupport
{
    public static readonly string[] FixtureFolders = ["llama-gqa", "mixtral", "falcon-new", "bloom"];

    public static string FixtureDir(string name) => Path.Combine(AppContext.BaseDirectory, "TestData", name);

    public static string FixtureFile(string name) => Path.Combine(FixtureDir(name), WeightStore.SingleFileName);

    public static string[] ReferenceTensorNames(string fixture)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(FixtureDir(fixture), "reference.json")));
        return doc.RootElement.GetProperty("safetensors_tensor_names").EnumerateArray().Select(e => e.GetString()!).ToArray();
    }

    /// <summary>Same dtype, shape and bytes: stricter than allclose, and NaN-safe.</summary>
    public static void AssertBitIdentical(Tensor expected, Tensor actual, string what)
    {
        Assert.True(expected.dtype == actual.dtype, $"{what}: dtype {actual.dtype}, expected {expected.dtype}");
        Assert.True(expected.shape.SequenceEqual(actual.shape),
            $"{what}: shape [{string.Join(",", actual.shape)}], expected [{string.Join(",", expected.shape)}]");
        using var e = expected.contiguous();
        using var a = actual.contiguous();
        Assert.True(e.bytes.SequenceEqual(a.bytes), $"{what}: bytes differ");
    }

    /// <summary>Writes a safetensors file by hand, for headers the writer would never produce.</summary>
    public static void WriteRaw(string path, string headerJson, long dataBytes, long? declaredHeaderLength = null)
    {
        var header = System.Text.Encoding.UTF8.GetBytes(headerJson);
        using var fs = new FileStream(path, FileMode.Create, FileAccess.Write);
        fs.Write(BitConverter.GetBytes(declaredHeaderLength ?? header.Length));
        fs.Write(header);
        fs.Write(new byte[dataBytes]);
    }
}
