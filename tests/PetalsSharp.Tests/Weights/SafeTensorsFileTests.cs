using PetalsSharp.Models.Weights;
using TorchSharp;
using Xunit;
using static PetalsSharp.Tests.Weights.SafeTensorsTestSupport;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Weights;

public class SafeTensorsFileTests
{
    public static TheoryData<string> FixtureNames => new(FixtureFolders);

    [Theory]
    [MemberData(nameof(FixtureNames))]
    public void ReadsFixtureNamesShapesAndData(string fixture)
    {
        using var file = new SafeTensorsFile(FixtureFile(fixture));
        Assert.Equal(ReferenceTensorNames(fixture), file.Entries.Keys.Order(StringComparer.Ordinal));
        Assert.Equal("pt", file.Metadata["format"]);
        Assert.Equal(0, file.DataOffset % 8);

        foreach (var entry in file.Entries.Values)
        {
            Assert.Equal("F32", entry.DType);
            Assert.InRange(entry.Shape.Length, 1, 2);
            Assert.All(entry.Shape, d => Assert.InRange(d, 1, 100_000));
            using var t = file.Load(entry.Name);
            Assert.Equal(ScalarType.Float32, t.dtype);
            Assert.Equal(entry.Shape, t.shape);
            Assert.True(t.is_contiguous());
            Assert.True(t.isfinite().all().item<bool>(), $"{entry.Name} has non-finite values");
        }

        Assert.Null(file.MappingError);
        Assert.Equal(file.Entries.Count, file.MappedLoadCount);

        // Norm scales were drawn as 1 + 0.1 N(0,1): a wrong byte offset would not look like that.
        string norm = file.Entries.Keys.First(k => k.EndsWith(".0.input_layernorm.weight") || k.EndsWith(".0.ln_attn.weight"));
        using var w = file.Load(norm);
        Assert.InRange(w.mean().item<float>(), 0.8f, 1.2f);
    }

    [Theory]
    [MemberData(nameof(FixtureNames))]
    public void RoundTripIsBitIdenticalAndReproducesTheOriginalFile(string fixture)
    {
        using var dir = new TempDir();
        string copy = dir.File("model.safetensors");
        using (var original = new SafeTensorsFile(FixtureFile(fixture)))
        {
            var tensors = original.Entries.Keys.Select(n => (n, original.Load(n))).ToList();
            SafeTensorsWriter.Write(copy, tensors);
            foreach (var (_, t) in tensors) t.Dispose();
        }

        using var a = new SafeTensorsFile(FixtureFile(fixture));
        using var b = new SafeTensorsFile(copy);
        Assert.Equal(a.Entries.Keys.Order(StringComparer.Ordinal), b.Entries.Keys.Order(StringComparer.Ordinal));
        foreach (var name in a.Entries.Keys)
        {
            using var x = a.Load(name);
            using var y = b.Load(name);
            AssertBitIdentical(x, y, name);
        }
        // The fixtures were written by the reference (Rust) safetensors library, so matching them byte for
        // byte shows the writer's header layout is the standard one, not just one this reader accepts.
        Assert.Equal(File.ReadAllBytes(FixtureFile(fixture)), File.ReadAllBytes(copy));
    }

    [Theory]
    [InlineData(ScalarType.BFloat16, "BF16")]
    [InlineData(ScalarType.Float16, "F16")]
    public void HalfPrecisionRoundTripMatchesTorchConversion(ScalarType half, string dtypeName)
    {
        using var dir = new TempDir();
        using var scope = NewDisposeScope();
        var source = randn(37, 53, generator: new Generator(1234)) * 3;
        var stored = source.to_type(half);
        SafeTensorsWriter.Write(dir.File("h.safetensors"), [("w", stored), ("z_f32", source)]);

        using var file = new SafeTensorsFile(dir.File("h.safetensors"));
        Assert.Equal(dtypeName, file.Entries["w"].DType);
        var expected = stored.to_type(ScalarType.Float32);
        AssertBitIdentical(expected, file.Load("w", ScalarType.Float32), "half -> f32");
        AssertBitIdentical(stored, file.Load("w", half), "half as stored");
        // f32 -> half on load must round exactly like torch does on the same values.
        AssertBitIdentical(stored, file.Load("z_f32", half), "f32 -> half on load");
        Assert.True(expected.sub(source).abs().max().item<float>() > 0, "the test needs values that half precision rounds");
    }

    [Fact]
    public void IntegerAndBoolTensorsRoundTrip()
    {
        using var dir = new TempDir();
        using var scope = NewDisposeScope();
        var tensors = new (string, Tensor)[]
        {
            ("i64", arange(0L, 12L).view(3, 4) * 1_000_000_007L),
            ("i32", arange(-5, 5, dtype: ScalarType.Int32)),
            ("u8", arange(0, 255, dtype: ScalarType.Byte)),
            ("bool", tensor(new[] { true, false, true })),
            ("scalar", tensor(2.5f)),
            ("empty", zeros(0, 4)),
        };
        SafeTensorsWriter.Write(dir.File("i.safetensors"), tensors, new Dictionary<string, string> { ["note"] = "ints" });
        using var file = new SafeTensorsFile(dir.File("i.safetensors"));
        Assert.Equal("ints", file.Metadata["note"]);
        Assert.Equal("pt", file.Metadata["format"]);
        foreach (var (name, t) in tensors) AssertBitIdentical(t, file.Load(name, t.dtype), name);
    }

    [Fact]
    public void WriterAcceptsViewsAndTrainableTensors()
    {
        using var dir = new TempDir();
        using var scope = NewDisposeScope();
        var matrix = randn(6, 10, generator: new Generator(5));
        var transposed = matrix.t();
        var columns = matrix.narrow(1, 3, 4);
        // A trained prompt is a leaf that requires grad; saving it must not need a detach by the caller.
        var prompt = randn(4, 8, generator: new Generator(6)).requires_grad_(true);
        SafeTensorsWriter.Write(dir.File("v.safetensors"), [("t", transposed), ("cols", columns), ("prompt", prompt)]);

        using var file = new SafeTensorsFile(dir.File("v.safetensors"));
        AssertBitIdentical(transposed.contiguous(), file.Load("t"), "transposed");
        AssertBitIdentical(columns.contiguous(), file.Load("cols"), "narrowed");
        AssertBitIdentical(prompt.detach(), file.Load("prompt"), "prompt");
        Assert.False(file.Load("prompt").requires_grad);
    }

    [Fact]
    public void WriterRejectsDuplicateNames()
    {
        using var dir = new TempDir();
        using var scope = NewDisposeScope();
        var ex = Assert.Throws<ArgumentException>(() =>
            SafeTensorsWriter.Write(dir.File("d.safetensors"), [("w", zeros(2)), ("w", ones(2))]));
        Assert.Contains("'w'", ex.Message);
        Assert.Empty(Directory.GetFiles(dir.Path));
    }

    [Fact]
    public void MisalignedTensorFallsBackToCopyWithSameResult()
    {
        using var dir = new TempDir();
        using var scope = NewDisposeScope();
        // Name order puts 3 F16 values (6 bytes) first, so the F32 tensor starts off a 4-byte boundary.
        var odd = tensor(new[] { 1f, 2f, 3f }).to_type(ScalarType.Float16);
        var f32 = randn(5, 7, generator: new Generator(7));
        SafeTensorsWriter.Write(dir.File("m.safetensors"), [("a_odd", odd), ("b_f32", f32)]);

        using var mapped = new SafeTensorsFile(dir.File("m.safetensors"));
        Assert.NotEqual(0, (mapped.DataOffset + mapped.Entries["b_f32"].Begin) % 4);
        AssertBitIdentical(f32, mapped.Load("b_f32"), "misaligned f32");
        AssertBitIdentical(odd, mapped.Load("a_odd", ScalarType.Float16), "aligned f16");

        Assert.Equal(1, mapped.MappedLoadCount);

        using var copied = new SafeTensorsFile(dir.File("m.safetensors"), allowMapping: false);
        AssertBitIdentical(f32, copied.Load("b_f32"), "copy path f32");
        AssertBitIdentical(odd, copied.Load("a_odd", ScalarType.Float16), "copy path f16");
        Assert.Equal(0, copied.MappedLoadCount);
    }

    [Fact]
    public void MappedTensorsAliasAPrivateMappingAndOutliveTheFile()
    {
        using var dir = new TempDir();
        using var scope = NewDisposeScope();
        var w = randn(16, 8, generator: new Generator(3));
        string path = dir.File("w.safetensors");
        SafeTensorsWriter.Write(path, [("w", w)]);
        byte[] before = File.ReadAllBytes(path);

        Tensor first, second;
        using (var file = new SafeTensorsFile(path))
        {
            first = file.Load("w");
            second = file.Load("w");
            first[0, 0] = tensor(1234.5f);
            // Same stored dtype: both loads are views of one mapping, so the write shows in the other one.
            Assert.Equal(1234.5f, second[0, 0].item<float>());
        }
        // Disposing the file must not unmap memory that returned tensors still use.
        Assert.Equal(1234.5f, first[0, 0].item<float>());
        Assert.Equal(w[1].sum().item<float>(), second[1].sum().item<float>());
        // MAP_PRIVATE: the write stayed in memory.
        Assert.Equal(before, File.ReadAllBytes(path));
    }

    [Fact]
    public void ChunkedByteAccessCoversNarrowedViewsCorrectly()
    {
        using var scope = NewDisposeScope();
        var t = arange(0, 1000, dtype: ScalarType.Int32);
        var collected = new List<byte>();
        var offsets = new List<long>();
        TensorBytes.ForEachChunk(t, (span, offset) =>
        {
            offsets.Add(offset);
            collected.AddRange(span.ToArray());
        }, chunkBytes: 1024);
        Assert.Equal(new long[] { 0, 1024, 2048, 3072 }, offsets);
        Assert.Equal(t.bytes.ToArray(), collected.ToArray());
    }
}
