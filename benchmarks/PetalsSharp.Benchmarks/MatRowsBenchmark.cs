using System.Diagnostics;
using System.Runtime.InteropServices;
using PetalsSharp.Models.Kernels;
using PetalsSharp.Models.Quant;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PetalsSharp.Benchmarks;

/// <summary>
/// The decode kernel alone: weight bytes (and weights) per second of <see cref="MatRows"/> for a few activation rows
/// against an FFN-sized (2048×768) and an LM-head-sized (32000×768) weight in f32, bf16, f16 and the block formats
/// int8 and nf4 (nf4-int: with <see cref="MatRows.QuantIntegerDot"/>), on one thread (<see cref="MatRows.MultiplyRange"/>) and on the shared team. Enough copies of each
/// matrix are cycled that they come from DRAM, as a decode step's weights do, not from L3. Formats are interleaved
/// within each round and each cell reports the median of the rounds (the box is shared and noisy).
/// </summary>
public static unsafe class MatRowsBenchmark
{
    public static Task RunAsync(BenchArgs args)
    {
        var bandwidth = EngineBenchmark.MeasureBandwidth();
        double seconds = args.Int("ms", 300) / 1000.0;
        int rounds = args.Int("rounds", 3);
        if (args.Get("pairs") is { } pairs) MatRows.UsePairs = pairs != "false";
        if (args.Get("v512") is { } v512) MatRows.UseVector512 = v512 != "false";
        if (args.Get("stream") is { } stream) MatRows.UseRowStream = stream != "false";
        if (args.Get("wide") is { } wide) MatRows.UseWideTiles = wide != "false";
        if (args.Get("qprefetch") is { } qprefetch) MatRows.QuantPrefetch = qprefetch != "false";
        if (args.Get("qint") is { } qint) MatRows.QuantIntegerDot = qint != "false";
        bool qintDefault = MatRows.QuantIntegerDot, streamDefault = MatRows.UseRowStream;
        bool reference = args.Get("reference") == "true";
        // --hot: one copy of each matrix, cache-resident, so the kernel's compute cost shows without DRAM.
        MatrixSet.Budget = args.Get("hot") == "true" ? 0 : 384L << 20;
        var rowCounts = (args.Get("rows") ?? "1,8").Split(',').Select(int.Parse).ToArray();
        var threads = (args.Get("threads") ?? $"1,{WorkerTeam.Shared.Size}").Split(',').Select(int.Parse).ToArray();
        var formats = (args.Get("formats") ?? "f32,bf16,f16,int8,nf4,nf4-int").Split(',');   // nf4-int: the integer dot
        var shapes = (args.Get("shapes") ?? "2048x768,32000x768").Split(',')
            .Select(s => s.Split('x')).Select(p => (Out: int.Parse(p[0]), In: int.Parse(p[1]))).ToArray();
        Console.WriteLine($"memory bandwidth: {bandwidth / 1e9:F1} GB/s; team of {WorkerTeam.Shared.Size}; {rounds} rounds; " +
                          $"AvxVnni {System.Runtime.Intrinsics.X86.AvxVnni.IsSupported}, Vector512 accelerated {System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated}; pairs {MatRows.UsePairs}, " +
                          $"512-bit {MatRows.UseVector512}, wide tiles {MatRows.UseWideTiles}, quant prefetch {MatRows.QuantPrefetch}, integer nf4 dot {MatRows.QuantIntegerDot}");
        Console.WriteLine();
        Console.WriteLine("| weight | format | rows | threads | GB/s | ÷ bandwidth | G weights/s | GFLOP/s | F.linear (f32) GB/s |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|");
        foreach (var (outF, inF) in shapes)
        {
            using var scope = NewDisposeScope();
            var source = randn(outF, inF).mul_(0.02);                                       // [out, in]
            var sets = formats.Select(f => new MatrixSet(f, source)).ToArray();
            try
            {
                var cells = new Dictionary<(string, int, int), List<double>>();
                var linear = new Dictionary<int, List<double>>();
                for (int round = 0; round < rounds; round++)
                    foreach (var rows in rowCounts)
                    {
                        var x = randn(rows, inF);                                           // [rows, in]
                        var y = empty(rows, outF);                                          // [rows, out]
                        float* xp = Pointer(x), yp = Pointer(y);
                        foreach (var t in threads)
                            foreach (var set in sets)
                            {
                                var m = set.Matrices;
                                Action<int> call = t == 1
                                    ? i => MatRows.MultiplyRange(m[i % m.Length], xp, rows, yp, outF, null, 0, outF)
                                    : i => MatRows.Multiply(m[i % m.Length], xp, rows, yp, outF, null, WorkerTeam.Shared);
                                MatRows.QuantIntegerDot = set.Name == "nf4-int" || (qintDefault && set.Name == "nf4");
                                // "f32-tiles": f32 in the four-row tiles, measured in the same rounds as the stream.
                                MatRows.UseRowStream = streamDefault && set.Name != "f32-tiles";
                                MatRows.SpreadRows = !set.Name.EndsWith("-first");
                                var key = (set.Name, rows, t);
                                if (!cells.TryGetValue(key, out var list)) cells[key] = list = [];
                                list.Add(Measure(seconds, call));
                            }
                        if (reference && sets.FirstOrDefault(s => s.Name == "f32") is { } f32)
                        {
                            if (!linear.TryGetValue(rows, out var list)) linear[rows] = list = [];
                            list.Add(Measure(seconds, i =>
                            {
                                using var r = F.linear(x, f32.Views[i % f32.Views.Length]);
                            }));
                        }
                    }
                foreach (var rows in rowCounts)
                    foreach (var t in threads)
                        foreach (var set in sets)
                        {
                            double perCall = Median(cells[(set.Name, rows, t)]), bytes = set.Matrices[0].Bytes;
                            var torch = set.Name == "f32" && t == threads[^1] && linear.TryGetValue(rows, out var l) ? $"{bytes / Median(l) / 1e9:F1}" : "";
                            Console.WriteLine($"| {outF}×{inF} | {set.Name} | {rows} | {t} | {bytes / perCall / 1e9:F1} | {bytes / perCall / bandwidth:F2} | " +
                                              $"{(double)outF * inF / perCall / 1e9:F1} | {2.0 * rows * outF * inF / perCall / 1e9:F0} | {torch} |");
                        }
            }
            finally
            {
                foreach (var set in sets) set.Dispose();
            }
        }
        return Task.CompletedTask;
    }

    /// <summary>Copies of one matrix in one format, past the L3 in total (a tensor, or native memory for block formats).</summary>
    sealed class MatrixSet : IDisposable
    {
        public string Name { get; }
        public WeightMatrix[] Matrices { get; }
        public Tensor[] Views { get; } = [];
        readonly Tensor? _all;
        readonly byte* _packed;

        public MatrixSet(string name, Tensor source)
        {
            Name = name;
            int outF = (int)source.shape[0], inF = (int)source.shape[1];
            var format = name switch { "int8" => QuantFormat.Int8, "nf4" or "nf4-int" => QuantFormat.Nf4, _ => QuantFormat.None };
            if (format == QuantFormat.None)
            {
                var dtype = name switch { "f32" or "f32-tiles" or "f32-first" => ScalarType.Float32, "bf16" or "bf16-first" => ScalarType.BFloat16, "f16" => ScalarType.Float16, _ => throw new ArgumentException($"unknown format '{name}'") };
                long bytes = (long)outF * inF * (dtype == ScalarType.Float32 ? 4 : 2);
                int copies = Copies(bytes);
                _all = source.to(dtype).repeat(copies, 1).DetachFromDisposeScope();          // [copies*out, in]
                Views = Enumerable.Range(0, copies).Select(c => _all.narrow(0, (long)c * outF, outF)).ToArray();
                Matrices = Views.Select(v => WeightMatrix.TryFrom(v)!.Value).ToArray();
                return;
            }
            long size = (long)outF * format.RowBytes(inF);
            int n = Copies(size);
            var one = new byte[size];
            BlockQuant.Quantize(format, source.contiguous().data<float>().ToArray(), outF, inF, one);
            _packed = (byte*)NativeMemory.AlignedAlloc((nuint)(size * n), 64);
            for (int c = 0; c < n; c++) one.CopyTo(new Span<byte>(_packed + c * size, (int)size));
            Matrices = Enumerable.Range(0, n).Select(c => WeightMatrix.Quantized(_packed + c * size, format, outF, inF)).ToArray();
        }

        public static long Budget { get; set; } = 384L << 20;

        static int Copies(long bytes) => (int)Math.Max(Budget == 0 ? 1 : 2, Budget / bytes);   // well past the L3

        public void Dispose()
        {
            _all?.Dispose();
            if (_packed is not null) NativeMemory.AlignedFree(_packed);
        }
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
        return Median([.. batches]);
    }

    static double Median(List<double> values)
    {
        values.Sort();
        return values[values.Count / 2];
    }

    /// <summary>A contiguous 2-D f32 tensor's first element.</summary>
    static float* Pointer(Tensor t) => (float*)WeightMatrix.TryFrom(t)!.Value.Data;
}
