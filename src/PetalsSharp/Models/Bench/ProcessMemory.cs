namespace PetalsSharp.Models.Bench;

/// <summary>What this process holds in memory, as the kernel counts it.</summary>
public static class ProcessMemory
{
    /// <summary>
    /// Peak resident set size in bytes: <c>VmHWM</c> from <c>/proc/self/status</c>, which counts mapped checkpoint
    /// pages and libtorch's native allocations, unlike the GC's numbers. Elsewhere, the runtime's peak working set.
    /// </summary>
    public static long PeakRssBytes()
    {
        const string status = "/proc/self/status";
        if (File.Exists(status))
            foreach (var line in File.ReadLines(status))
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal)
                    && long.TryParse(line["VmHWM:".Length..].Trim().Split(' ')[0], out var kb))
                    return kb * 1024;
        using var self = System.Diagnostics.Process.GetCurrentProcess();
        return self.PeakWorkingSet64;
    }
}
