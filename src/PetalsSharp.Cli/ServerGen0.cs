using System.Collections;
using System.Runtime.InteropServices;

namespace PetalsSharp.Cli;

/// <summary>
/// A smaller young generation for <c>petals server</c>. The .NET GC sizes gen 0 from the L3 cache (16 MB on a 32 MiB
/// L3) and a busy server keeps all of it resident, next to spans whose weights may be only a few hundred MB; a 4 MB
/// gen 0 measured 19 MiB less RSS on four 8B-shaped bf16 blocks serving 8 sessions, at the same tokens per second
/// (docs/benchmarks.md). The runtime reads <c>DOTNET_GCgen0size</c> only from the environment, before any managed code
/// runs (runtimeconfig.json keys are ignored), so the server re-executes itself with it set: same PID, arguments and
/// descriptors, as a process supervisor or test harness sees it. A value the operator set is kept.
/// </summary>
static class ServerGen0
{
    internal const string Variable = "DOTNET_GCgen0size";
    const string Budget = "0x400000";   // 4 MiB

    /// <summary>Replaces this process with itself and the gen-0 budget set; returns only when it does not apply or fails.</summary>
    public static void ReexecuteIfUnset(string[] args)
    {
        if (!OperatingSystem.IsLinux() || args is not ["server", ..]) return;
        if (Environment.GetEnvironmentVariable(Variable) is not null || Environment.GetEnvironmentVariable("COMPlus_GCgen0size") is not null) return;
        // The command line exactly as it came (apphost, or `dotnet petals.dll` with whatever host options it had).
        string[] original;
        try { original = File.ReadAllText("/proc/self/cmdline").Split('\0', StringSplitOptions.None)[..^1]; }
        catch (IOException) { return; }
        if (Environment.ProcessPath is not { } path || original.Length == 0) return;
        var env = new List<string?>();
        foreach (DictionaryEntry e in Environment.GetEnvironmentVariables()) env.Add($"{e.Key}={e.Value}");
        env.Add($"{Variable}={Budget}");
        env.Add(null);
        execve(path, [.. original, null], [.. env]);
        // Still here: the exec failed (a deleted binary, a seccomp policy); the default budget only costs memory.
    }

    [DllImport("libc", SetLastError = true)]
    static extern int execve(string path, string?[] argv, string?[] envp);
}
