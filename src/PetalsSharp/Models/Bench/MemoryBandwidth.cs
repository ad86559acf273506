using System.Diagnostics;
using System.Numerics.Tensors;
using static TorchSharp.torch;

namespace PetalsSharp.Models.Bench;

/// <summary>Streaming read rates of this machine, the roof a decode step's weight reads are held against.</summary>
/// <param name="TorchSum">Summing a float tensor with libtorch's threads, bytes/s.</param>
/// <param name="HostRead">A plain C# read (<c>TensorPrimitives.Sum</c>, one chunk per thread), bytes/s.</param>
public sealed record MemoryBandwidth(double TorchSum, double HostRead)
{
    /// <summary>
    /// Large enough to defeat any last-level cache (server CPUs reach a few hundred MB), small enough that a bench
    /// on a busy host does not page.
    /// </summary>
    public const long DefaultBytes = 512L << 20;

    /// <summary>The faster reader: neither is always the better streamer, and the roof is what the machine can do.</summary>
    public double Best => Math.Max(TorchSum, HostRead);

    /// <summary>
    /// Best of 5 timed passes (after one untimed) of each reader over <paramref name="bytes"/>, with
    /// <paramref name="threads"/> C# threads. The buffers are freed before returning.
    /// </summary>
    public static MemoryBandwidth Measure(int threads, long bytes = DefaultBytes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        long floats = Math.Clamp(bytes / sizeof(float), 1L << 20, Array.MaxLength);
        double torchSeconds;
        using (var big = ones(floats))   // [N]
            torchSeconds = BestOf(() =>
            {
                using var s = big.sum();   // []
                s.item<float>();
            });
        var host = new float[floats];
        Array.Fill(host, 1f);
        long chunk = floats / threads;
        double hostSeconds = BestOf(() =>
            Parallel.For(0, threads, t => TensorPrimitives.Sum(host.AsSpan((int)(t * chunk), (int)chunk))));
        return new MemoryBandwidth(floats * 4 / torchSeconds, chunk * threads * 4 / hostSeconds);
    }

    static double BestOf(Action read)
    {
        read();   // page in and warm up the threads
        double best = double.MaxValue;
        for (int i = 0; i < 5; i++)
        {
            var sw = Stopwatch.StartNew();
            read();
            best = Math.Min(best, sw.Elapsed.TotalSeconds);
        }
        return Math.Max(best, 1e-9);
    }
}
