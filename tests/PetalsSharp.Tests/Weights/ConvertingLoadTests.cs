using PetalsSharp.Models.Weights;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Weights;

/// <summary>
/// A tensor loaded in another dtype than stored is converted in chunks from reads, never through the file mapping,
/// so the source pages do not stay resident beside the converted weights.
/// </summary>
public sealed class ConvertingLoadTests
{
    [Theory]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float16)]
    public void Converting_load_matches_to_type_and_maps_nothing(ScalarType dtype)
    {
        using var dir = new TempDir();
        string path = dir.File("f32.safetensors");
        using var scope = NewDisposeScope();
        manual_seed(9);
        var a = randn(37, 29);                                                    // [37, 29]
        var b = randn(5);                                                         // [5]
        SafeTensorsWriter.Write(path, [("a", a), ("b", b)]);

        // 100 bytes per chunk: 25 f32 values, so a [37, 29] tensor takes many chunks and a ragged last one.
        using var file = new SafeTensorsFile(path) { ConvertChunkBytes = 100 };
        var loadedA = file.Load("a", dtype);
        var loadedB = file.Load("b", dtype);
        Assert.Equal(dtype, loadedA.dtype);
        Assert.Equal(a.shape, loadedA.shape);
        Assert.True(a.to_type(dtype).eq(loadedA).all().item<bool>(), "chunked conversion differs from to_type");
        Assert.True(b.to_type(dtype).eq(loadedB).all().item<bool>());
        Assert.Equal(0, file.MappedLoadCount);
        if (OperatingSystem.IsLinux())
            Assert.DoesNotContain(Path.GetFullPath(path), File.ReadAllText("/proc/self/maps"));

        // A load in the stored dtype still aliases the mapping.
        using var stored = file.Load("a", ScalarType.Float32);
        Assert.Equal(1, file.MappedLoadCount);
    }

    [Fact]
    public void Converting_load_of_a_bf16_checkpoint_to_f32_is_exact()
    {
        using var dir = new TempDir();
        string path = dir.File("bf16.safetensors");
        using var scope = NewDisposeScope();
        var w = randn(64, 33).to_type(ScalarType.BFloat16);                       // [64, 33]
        SafeTensorsWriter.Write(path, [("w", w)]);
        using var file = new SafeTensorsFile(path) { ConvertChunkBytes = 64 };
        var f32 = file.Load("w", ScalarType.Float32);
        Assert.True(w.to_type(ScalarType.Float32).eq(f32).all().item<bool>());
        Assert.Equal(0, file.MappedLoadCount);
    }
}
