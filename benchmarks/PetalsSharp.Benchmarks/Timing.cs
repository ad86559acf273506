using System.Diagnostics;

namespace PetalsSharp.Benchmarks;

public static class Timing
{
    /// <summary>Median seconds of <paramref name="repeats"/> runs after <paramref name="warmup"/> unmeasured ones.</summary>
    public static double Median(Action action, int repeats = 5, int warmup = 1)
    {
        for (int i = 0; i < warmup; i++) action();
        var times = new double[repeats];
        for (int i = 0; i < repeats; i++)
        {
            var sw = Stopwatch.StartNew();
            action();
            times[i] = sw.Elapsed.TotalSeconds;
        }
        Array.Sort(times);
        return times[repeats / 2];
    }
}
