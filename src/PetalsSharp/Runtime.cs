namespace PetalsSharp;

/// <summary>Process-wide settings every PetalsSharp entry point applies once.</summary>
public static class Runtime
{
    /// <summary>
    /// Raises the thread pool's minimum. With 2 cores the pool starts with 2 threads and adds one only every
    /// ~0.5 s when they are blocked; gRPC continuations and sync-over-async
    /// autograd calls then stall for up to a second (measured through the link shaper). 16 threads cost nothing.
    /// </summary>
    public static void Configure()
    {
        ThreadPool.GetMinThreads(out var workers, out var io);
        ThreadPool.SetMinThreads(Math.Max(workers, 16), Math.Max(io, 16));
        ReturnLargeBlocksToTheSystem();
    }

    /// <summary>
    /// glibc serves a freed block's size from its per-thread arenas from then on (its mmap threshold rises with each
    /// large free, up to 32 MB), and arenas keep what is freed into them. Weight conversion chunks and prefill tiles
    /// are such blocks, freed on whichever of the 16+ pool threads ran the step: four 8B-shaped blocks in bf16
    /// (1.75 GB of weights) held 2.33 GB after load and 3.10 GB after one 64-token prefill. With the threshold fixed
    /// at 1 MB every large block is its own mapping, returned on free: 1.94 GB and 2.28 GB peak.
    /// </summary>
    static void ReturnLargeBlocksToTheSystem()
    {
        if (!OperatingSystem.IsLinux()) return;
        try
        {
            mallopt(MmapThreshold, 1 << 20);
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            // Not glibc (musl has no mallopt): its allocator returns large blocks by itself.
        }
    }

    /// <summary>
    /// Where PetalsSharp keeps what it can rebuild (measured throughput, packed weights, the demo model):
    /// <c>$PETALS_CACHE</c>, else <c>~/.cache/petals-sharp</c>.
    /// </summary>
    public static string CacheDirectory => Environment.GetEnvironmentVariable("PETALS_CACHE") is { Length: > 0 } env ? env
        : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "petals-sharp");

    const int MmapThreshold = -3;   // M_MMAP_THRESHOLD in malloc.h

    [System.Runtime.InteropServices.DllImport("libc")]
    static extern int mallopt(int param, int value);
}
