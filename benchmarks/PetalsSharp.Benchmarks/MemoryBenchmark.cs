using System.Diagnostics;
using PetalsSharp.Client;
using PetalsSharp.Models;
using PetalsSharp.Models.Quant;
using PetalsSharp.Server;
using static TorchSharp.torch;

namespace PetalsSharp.Benchmarks;

/// <summary>
/// Peak resident memory of a real <c>petals server</c> process against what it must hold: its weights in the served
/// dtype plus its KV budget. A client opens one session and runs a prefill and single-token decode steps; the
/// server's VmRSS and VmHWM (the kernel's high-water mark) are read from /proc after load, after the prefill and at
/// the end. Issue 16's acceptance: peak ≤ 1.15 × (weights + KV budget) on four Llama-3-8B-shaped blocks in bf16;
/// issue 17's: RSS after serving a session ≤ 1.15 × the same with <c>--quant int8|nf4</c> (weights = the packed bytes),
/// read a moment after the last step, once the server's idle heap trim has run.
/// </summary>
public static class MemoryBenchmark
{
    public static async Task RunAsync(BenchArgs args)
    {
        var dir = args.Get("model") ?? throw new ArgumentException(
            "give --model DIR, e.g. an f32 checkpoint of four Llama-3-8B-shaped blocks made with: petals create-model --family llama " +
            "--hidden-size 4096 --layers 4 --heads 32 --kv-heads 8 --intermediate-size 14336 --vocab-size 1024 --out /tmp/llama8b-4");
        var dtype = args.Get("dtype") ?? "bf16";
        long cacheBytes = long.Parse(args.Get("cache-bytes") ?? "270000000");
        int prompt = args.Int("prompt", 64), newTokens = args.Int("new", 64);
        var config = ModelConfigLoader.Load(dir);
        int elementSize = dtype is "f32" or "float32" ? 4 : 2;
        var quant = PetalsSharp.Models.Quant.QuantFormats.Parse(args.Get("quant") ?? "none");
        // Packed matrices count their packed bytes (scales and row padding included); the rest its dtype.
        long weightBytes = Enumerable.Range(0, config.NumLayers)
            .SelectMany(i => config.Family.BlockTensors(config, i))
            .Sum(t => t.QuantizedBy(quant)
                ? t.Shape[0] * PetalsSharp.Models.Quant.QuantFormats.RowBytes(quant, t.Shape[1])
                : t.Shape.Aggregate(1L, (a, d) => a * d) * elementSize);

        ServerProcess.StartTimeout = TimeSpan.FromMinutes(10);   // gigabytes to load, on a box that may be busy
        var sw = Stopwatch.StartNew();
        using var server = await ServerProcess.StartAsync(dir, 0, config.NumLayers,
            "--dtype", dtype, "--quant", quant.Name(), "--cache-bytes", cacheBytes.ToString(), "--throughput", "1");
        double loadSeconds = sw.Elapsed.TotalSeconds;
        var afterLoad = Status(server.Id);
        var whereLoaded = Smaps(server.Id);

        using var remote = await RemoteSequential.ConnectAsync(config, [server.Address]);
        using var session = remote.OpenSession(new SessionOptions(1, prompt + newTokens));
        manual_seed(0);
        using var x = randn(1, prompt, config.HiddenSize);                                  // [1, T, H]
        sw.Restart();
        using (var y = await session.StepAsync(x)) { }                                      // [1, T, H]
        double prefillSeconds = sw.Elapsed.TotalSeconds;
        var afterPrefill = Status(server.Id);
        using var token = randn(1, 1, config.HiddenSize);                                   // [1, 1, H]
        sw.Restart();
        for (int i = 0; i < newTokens; i++)
        {
            using var y = await session.StepAsync(token);                                   // [1, 1, H]
        }
        double decodeSeconds = sw.Elapsed.TotalSeconds;
        await Task.Delay(1500);   // the server trims its native heap after 250 ms without work (ComputeScheduler)
        var end = Status(server.Id);
        var where = Smaps(server.Id);
        if (args.Int("hold", 0) is > 0 and var hold) { Console.WriteLine($"holding server pid {server.Id} for {hold} s"); await Task.Delay(hold * 1000); }
        await server.StopAsync(TimeSpan.FromSeconds(30));

        double budget = weightBytes + cacheBytes;
        Console.WriteLine($"model {dir}: {config.NumLayers} blocks, hidden {config.HiddenSize}, served in {dtype}, quant {quant.Name()}, checkpoint {config.TorchDtype ?? "float32"}");
        Console.WriteLine($"weights {Gb(weightBytes)} GB + KV budget {Gb(cacheBytes)} GB = {Gb(budget)} GB");
        Console.WriteLine($"load {loadSeconds:F1} s; prefill {prompt} tokens {prefillSeconds:F2} s ({prompt / prefillSeconds:F1} tok/s); " +
            $"decode {newTokens} tokens {decodeSeconds:F2} s ({newTokens / decodeSeconds:F1} tok/s)");
        Console.WriteLine($"RSS after load {Gb(afterLoad.Rss)} GB (peak {Gb(afterLoad.Hwm)}), after prefill {Gb(afterPrefill.Rss)} GB " +
            $"(peak {Gb(afterPrefill.Hwm)}), at the end {Gb(end.Rss)} GB");
        Console.WriteLine($"RSS after serving {Gb(end.Rss)} GB = {end.Rss / budget:F3} × (weights + KV budget); acceptance ≤ 1.15");
        Console.WriteLine($"peak RSS (VmHWM) {Gb(end.Hwm)} GB = {end.Hwm / budget:F3} × (weights + KV budget)");
        Console.WriteLine("resident after load, by mapping: " + string.Join(", ", whereLoaded.Take(8).Select(w => $"{w.Name} {w.Bytes / 1e6:F1} MB")));
        Console.WriteLine("resident at the end, by mapping: " + string.Join(", ", where.Take(8).Select(w => $"{w.Name} {w.Bytes / 1e6:F1} MB")));
    }

    /// <summary>Resident bytes per mapping name (anonymous mappings as "[anon]"), largest first: where a floor comes from.</summary>
    static List<(string Name, long Bytes)> Smaps(int pid)
    {
        var sums = new Dictionary<string, long>();
        string name = "";
        foreach (var line in File.ReadLines($"/proc/{pid}/smaps"))
        {
            var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length > 0 && parts[0].Contains('-') && !parts[0].EndsWith(':'))
                name = parts.Length >= 6 ? Path.GetFileName(parts[5]) is { Length: > 0 } f ? f : parts[5] : "[anon]";
            else if (line.StartsWith("Rss:")) sums[name] = sums.GetValueOrDefault(name) + Kb(line);
        }
        return sums.Select(kv => (kv.Key, kv.Value)).OrderByDescending(w => w.Item2).ToList();
    }

    static string Gb(double bytes) => (bytes / 1e9).ToString("F3");

    /// <summary>VmRSS and VmHWM of a process, in bytes.</summary>
    static (long Rss, long Hwm) Status(int pid)
    {
        long rss = 0, hwm = 0;
        foreach (var line in File.ReadLines($"/proc/{pid}/status"))
        {
            if (line.StartsWith("VmRSS:")) rss = Kb(line);
            else if (line.StartsWith("VmHWM:")) hwm = Kb(line);
        }
        return (rss, hwm);
    }

    static long Kb(string line) => long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
}
