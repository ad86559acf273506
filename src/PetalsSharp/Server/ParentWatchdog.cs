using System.Diagnostics;

namespace PetalsSharp.Server;

/// <summary>
/// Ends a child process whose parent died. Tests, benchmarks and demos start servers as child processes; if the
/// parent is killed (a crashed test host, Ctrl-C on a demo), the children must not linger holding ports and
/// memory. The parent passes its PID in <see cref="Variable"/>.
/// </summary>
public static class ParentWatchdog
{
    public const string Variable = "PETALS_PARENT_PID";

    /// <summary>Starts watching when <see cref="Variable"/> names a live process; otherwise does nothing.</summary>
    public static void StartFromEnvironment()
    {
        if (!int.TryParse(Environment.GetEnvironmentVariable(Variable), out var pid)) return;
        Process parent;
        try { parent = Process.GetProcessById(pid); }
        catch (ArgumentException) { Environment.Exit(0); return; }
        var thread = new Thread(() =>
        {
            while (true)
            {
                if (parent.WaitForExit(1000))
                    Environment.Exit(0);
            }
        })
        { IsBackground = true, Name = "petals-parent-watchdog" };
        thread.Start();
    }
}
