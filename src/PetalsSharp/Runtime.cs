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
    }
}
