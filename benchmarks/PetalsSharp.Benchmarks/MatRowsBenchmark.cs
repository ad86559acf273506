using System.Diagnostics;
using PetalsSharp.Models.Kernels;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PetalsSharp.Benchmarks;

/// <summary>
/// The decode kernel alone: weight bytes per second of <see cref="MatRows.Multiply"/> for 1, 4 and 16 activation rows
/// against an FFN-sized (2048×768) and an LM-head-sized (32000×768) weight in f32, bf16 and f16, on the shared team.
/// Enough copies of each matrix are cycled that they come from DRAM, as a decode step's weights do, not from L3.
/// </summary>
public static unsafe class MatRowsBenchmark
{
    public static Task RunAsync(BenchArgs args)
    {
        var bandwidth = EngineBenchmark.MeasureBandwidth();
        double seconds = args.Int("ms", 300) / 1000.0;
        if (args.Get("pairs") is { } pairs) MatRows.UsePairs = pairs != "false";
        if (args.Get("v512") is { } v512) MatRows.UseVector512 = v512 != "false";
        if (args.Get("wide") is { } wide) MatRows.UseWideTiles = wide != "false";
        var rowCounts = (args.Get("rows") ?? "1,4,16").Split(',').Select(int.Parse).ToArray();
        Console.WriteLine($"memory bandwidth: {bandwidth / 1e9:F1} GB/s; team of {WorkerTeam.Shared.Size}; " +
                          $"Vector512 accelerated {System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated}, Avx512F {System.Runtime.Intrinsics.X86.Avx512F.IsSupported}, " +
                          $"Avx512BW {System.Runtime.Intrinsics.X86.Avx512BW.IsSupported}; pairs {MatRows.UsePairs}, 512-bit {MatRows.UseVector512}, wide tiles {MatRows.UseWideTiles}");
        Console.WriteLine();
        Console.WriteLine("| weight | dtype | rows | MatRows GB/s | ÷ bandwidth | GFLOP/s | F.linear (f32) GB/s |");
        Console.WriteLine("|---|---|---|---|---|---|---|");
        foreach (var (outF, inF) in new[] { (2048, 768), (32000, 768) })
            foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16, ScalarType.Float16 })
            {
                using var scope = NewDisposeScope();
                long elementSize = dtype == ScalarType.Float32 ? 4 : 2, bytes = (long)outF * inF * elementSize;
                int copies = (int)Math.Max(2, (384L << 20) / bytes);   // well past the L3
                var all = randn((long)copies * outF, inF).mul_(0.02).to(dtype);            // [copies*out, in]
                var matrices = Enumerable.Range(0, copies)
                    .Select(c => WeightMatrix.TryFrom(all.narrow(0, (long)c * outF, outF))!.Value).ToArray();
                foreach (var rows in rowCounts)
                {
                    var x = randn(rows, inF);                                              // [rows, in]
                    var y = empty(rows, outF);                                             // [rows, out]
                    float* xp = Pointer(x), yp = Pointer(y);
                    var perCall = Measure(seconds, i => MatRows.Multiply(matrices[i % copies], xp, rows, yp, outF, null, WorkerTeam.Shared));
                    var reference = "";
                    if (dtype == ScalarType.Float32)
                    {
                        var viewed = Enumerable.Range(0, copies).Select(c => all.narrow(0, (long)c * outF, outF)).ToArray();
                        var t = Measure(seconds, i =>
                        {
                            using var r = F.linear(x, viewed[i % copies]);
                        });
                        reference = $"{bytes / t / 1e9:F1}";
                    }
                    Console.WriteLine($"| {outF}×{inF} | {dtype} | {rows} | {bytes / perCall / 1e9:F1} | {bytes / perCall / bandwidth:F2} | " +
                                      $"{2.0 * rows * outF * inF / perCall / 1e9:F0} | {reference} |");
                }
            }
        return Task.CompletedTask;
    }

    /// <summary>Median seconds per call over 5 batches, each running about <paramref name="seconds"/>/5.</summary>
    static double Measure(double seconds, Action<int> call)
    {
        int i = 0;
        for (int w = 0; w < 20; w++) call(i++);
        var batches = new double[5];
        for (int b = 0; b < batches.Length; b++)
        {
            var sw = Stopwatch.StartNew();
            int calls = 0;
            while (sw.Elapsed.TotalSeconds < seconds / batches.Length)
            {
                call(i++);
                calls++;
            }
            batches[b] = sw.Elapsed.TotalSeconds / calls;
        }
        Array.Sort(batches);
        return batches[batches.Length / 2];
    }

    /// <summary>A contiguous 2-D f32 tensor's first element.</summary>
    static float* Pointer(Tensor t) => (float*)WeightMatrix.TryFrom(t)!.Value.Data;
}
