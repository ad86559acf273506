using System.Runtime.InteropServices;

namespace PetalsSharp;

/// <summary>
/// Hands freed native memory back to the kernel. libtorch allocates through glibc's malloc, which keeps what a
/// prefill frees (about 80 MB after a 64-token prefill of the 100M model, in its arenas) for reuse, so a server's
/// resident memory stayed at its high-water mark long after the work that needed it. <c>malloc_trim</c> releases the
/// free pages of every arena. Elsewhere (musl, macOS, Windows) this is a no-op.
/// </summary>
public static partial class NativeHeap
{
    static bool _unavailable = !OperatingSystem.IsLinux();

    /// <summary>Releases free native heap pages; false when the C library has no <c>malloc_trim</c>.</summary>
    public static bool Trim()
    {
        if (Volatile.Read(ref _unavailable)) return false;
        try
        {
            MallocTrim(0);   // its result only says whether anything was released
            return true;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            Volatile.Write(ref _unavailable, true);
            return false;
        }
    }

    [LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);
}
