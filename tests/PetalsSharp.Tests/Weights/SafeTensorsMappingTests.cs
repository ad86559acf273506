using System.Diagnostics;
using PetalsSharp.Models.Weights;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Weights;

/// <summary>Runs alone so other tests' allocations do not blur its memory measurements.</summary>
[CollectionDefinition(nameof(SafeTensorsMappingCollection), DisableParallelization = true)]
public class SafeTensorsMappingCollection
{
}

[Collection(nameof(SafeTensorsMappingCollection))]
public class SafeTensorsMappingTests(ITestOutputHelper output)
{
    private const long BigElements = 50L << 20; // 200 MB of float32

    private static long ResidentBytes()
    {
        // /proc/self/statm field 2 is resident pages; it is what the kernel charges us, unlike GC counters.
        var fields = File.ReadAllText("/proc/self/statm").Split(' ');
        return long.Parse(fields[1]) * Environment.SystemPageSize;
    }

    [SkippableFact]
    public void LoadingFromLargeFileMapsInsteadOfReading()
    {
        Skip.IfNot(OperatingSystem.IsLinux(), "uses /proc/self/statm");
        using var dir = new TempDir();
        string path = dir.File("big.safetensors");
        using (var scope = NewDisposeScope())
        {
            var small = arange(0, 16, dtype: ScalarType.Float32);
            var big = full(BigElements, 0.5f);
            SafeTensorsWriter.Write(path, [("a_small", small), ("big", big), ("c_small", small * 2)]);
        }
        Assert.True(new FileInfo(path).Length > BigElements * 4);

        using var file = new SafeTensorsFile(path);
        using (var warm = file.Load("a_small")) Assert.Equal(15f, warm[15].item<float>());

        long rssBefore = ResidentBytes();
        var sw = Stopwatch.StartNew();
        using var bigTensor = file.Load("big");
        using var tail = file.Load("c_small");
        sw.Stop();
        long growth = ResidentBytes() - rssBefore;

        output.WriteLine($"mapped load: {sw.Elapsed.TotalMilliseconds:F2} ms, resident growth {growth >> 10} KB, mapped loads {file.MappedLoadCount}");
        Assert.Equal(3, file.MappedLoadCount);
        Assert.Equal(new[] { BigElements }, bigTensor.shape);
        Assert.Equal(30f, tail[15].item<float>());
        // Resident memory is the real evidence: the copying path grows it by the full 200 MB, and takes
        // about 100 ms here, so the time bound is only a loose guard for a noisy 2-core box.
        Assert.True(sw.ElapsedMilliseconds < 1000, $"loading took {sw.ElapsedMilliseconds} ms");
        Assert.True(growth < 50L << 20, $"resident memory grew by {growth >> 20} MB for a {BigElements * 4 >> 20} MB tensor");

        // Touching a slice pages in only that slice.
        using (var slice = bigTensor.narrow(0, BigElements / 2, 1024)) Assert.Equal(512f, slice.sum().item<float>());
        Assert.True(ResidentBytes() - rssBefore < 60L << 20);
    }

    [Fact]
    public void ConvertingLoadCopiesOnlyTheRequestedTensor()
    {
        using var dir = new TempDir();
        string path = dir.File("mixed.safetensors");
        using (var scope = NewDisposeScope())
        {
            SafeTensorsWriter.Write(path, [("a", randn(64, 64).to_type(ScalarType.BFloat16)), ("b", randn(8))]);
        }
        using var file = new SafeTensorsFile(path);
        using var a = file.Load("a", ScalarType.Float32);
        using var again = file.Load("a", ScalarType.Float32);
        a.fill_(7f);
        // A converted tensor is a private copy: writing it affects neither the mapping nor other loads.
        Assert.NotEqual(7f, again[0, 0].item<float>());
    }
}
