using System.Text.Json;
using static TorchSharp.torch;

namespace PetalsSharp.Tests;

/// <summary>A fixture's reference.json (HF transformers outputs), with nested arrays read as tensors.</summary>
public sealed class Reference : IDisposable
{
    readonly JsonDocument _doc;

    Reference(string dir)
    {
        Dir = dir;
        _doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, "reference.json")));
    }

    public string Dir { get; }
    public JsonElement Root => _doc.RootElement;

    /// <summary>A random-weight fixture copied into the test data (TestData/NAME).</summary>
    public static Reference Load(string name) => new(TestData.Path(name));

    public static Reference LoadFrom(string dir) => new(dir);

    public JsonElement this[string path]
    {
        get
        {
            var e = Root;
            foreach (var part in path.Split('.'))
                e = int.TryParse(part, out var i) ? e[i] : e.GetProperty(part);
            return e;
        }
    }

    public Tensor Floats(string path) => ToTensor(this[path], ScalarType.Float32);
    public Tensor Longs(string path) => ToTensor(this[path], ScalarType.Int64);

    public List<IReadOnlyList<int>> IdRows(string path) =>
        this[path].EnumerateArray().Select(r => (IReadOnlyList<int>)r.EnumerateArray().Select(x => x.GetInt32()).ToList()).ToList();

    /// <summary>Token id rows as the CLI's <c>--input-ids</c> takes them: <c>"1,2,3;4,5,6"</c>.</summary>
    public string IdsArg(string path) => string.Join(";", IdRows(path).Select(row => string.Join(",", row)));

    public static Tensor ToTensor(JsonElement e, ScalarType dtype)
    {
        var shape = new List<long>();
        var probe = e;
        while (probe.ValueKind == JsonValueKind.Array)
        {
            shape.Add(probe.GetArrayLength());
            if (probe.GetArrayLength() == 0) break;
            probe = probe[0];
        }
        if (dtype == ScalarType.Int64)
        {
            var longs = new List<long>();
            Flatten(e, x => longs.Add(x.GetInt64()));
            return tensor(longs.ToArray(), shape.ToArray());
        }
        var floats = new List<float>();
        Flatten(e, x => floats.Add(x.GetSingle()));
        return tensor(floats.ToArray(), shape.ToArray());
    }

    static void Flatten(JsonElement e, Action<JsonElement> add)
    {
        if (e.ValueKind == JsonValueKind.Array)
            foreach (var x in e.EnumerateArray()) Flatten(x, add);
        else add(e);
    }

    public void Dispose() => _doc.Dispose();
}

/// <summary>Paths of test data copied next to the test assembly.</summary>
public static class TestData
{
    public static string Path(string name) => System.IO.Path.Combine(AppContext.BaseDirectory, "TestData", name);
}

/// <summary>Element-wise tolerance checks with a message that says where and by how much.</summary>
public static class TensorAssert
{
    /// <summary>Asserts |actual - expected| ≤ atol + rtol·|expected| everywhere.</summary>
    public static void Close(Tensor expected, Tensor actual, double atol, double rtol, string what = "tensor")
    {
        Xunit.Assert.Equal(expected.shape, actual.shape);
        using var scope = NewDisposeScope();
        var e = expected.to(ScalarType.Float64).cpu();
        var a = actual.detach().to(ScalarType.Float64).cpu();
        var excess = (a - e).abs() - (e.abs() * rtol + atol);
        var worst = excess.max().item<double>();
        if (worst > 0 || double.IsNaN(worst))
        {
            var maxAbs = (a - e).abs().max().item<double>();
            Xunit.Assert.Fail($"{what}: max |diff| {maxAbs:E3} exceeds atol {atol:E1} + rtol {rtol:E1}·|expected| (by {worst:E3})");
        }
    }

    public static double MaxAbsDiff(Tensor expected, Tensor actual)
    {
        using var scope = NewDisposeScope();
        return (expected.to(ScalarType.Float64).cpu() - actual.detach().to(ScalarType.Float64).cpu()).abs().max().item<double>();
    }
}
