using System.Diagnostics;
using System.Text;
using PetalsSharp.Server;

namespace PetalsSharp.Testing;

/// <summary>A <c>petals</c> child process whose output is kept; killed with its tree on dispose.</summary>
public sealed class ChildProcess : IDisposable
{
    readonly Process _process;
    readonly StringBuilder _log = new();
    readonly List<(string Prefix, TaskCompletionSource<string> Line)> _waiting = [];

    ChildProcess(Process process) => _process = process;

    public static ChildProcess Start(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(ServerProcess.DefaultPetalsDll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment[ParentWatchdog.Variable] = Environment.ProcessId.ToString();
        var child = new ChildProcess(Process.Start(psi)!);
        child._process.OutputDataReceived += (_, e) => child.OnLine(e.Data);
        child._process.ErrorDataReceived += (_, e) => child.OnLine(e.Data);
        child._process.BeginOutputReadLine();
        child._process.BeginErrorReadLine();
        return child;
    }

    void OnLine(string? line)
    {
        if (line is null) return;
        lock (_log)
        {
            _log.AppendLine(line);
            foreach (var (prefix, waiter) in _waiting)
                if (line.StartsWith(prefix, StringComparison.Ordinal)) waiter.TrySetResult(line[prefix.Length..].Trim());
        }
    }

    /// <summary>The rest of the first line that starts with <paramref name="prefix"/> (for lines printed before the call, too).</summary>
    public async Task<string> WaitForLineAsync(string prefix)
    {
        var waiter = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_log)
        {
            foreach (var line in _log.ToString().Split('\n'))
                if (line.StartsWith(prefix, StringComparison.Ordinal)) return line[prefix.Length..].Trim();
            _waiting.Add((prefix, waiter));
        }
        var exited = _process.WaitForExitAsync();
        var first = await Task.WhenAny(waiter.Task, exited, Task.Delay(TimeSpan.FromSeconds(90)));
        if (first == exited) throw new InvalidOperationException($"the process exited before printing '{prefix}':\n{Log}");
        if (first != waiter.Task) throw new TimeoutException($"no '{prefix}' line in 90 s:\n{Log}");
        return await waiter.Task;
    }

    public string Log
    {
        get { lock (_log) return _log.ToString(); }
    }

    public bool IsRunning => !_process.HasExited;

    public static bool IsAlive(int pid)
    {
        try
        {
            using var p = Process.GetProcessById(pid);
            return !p.HasExited;
        }
        catch (ArgumentException) { return false; }
    }

    /// <summary>Kills the process at once, as a crash would (SIGKILL); its log stays readable.</summary>
    public void Kill()
    {
        if (!_process.HasExited) _process.Kill(entireProcessTree: true);
        _process.WaitForExit(10_000);
    }

    public void Dispose()
    {
        Kill();
        _process.Dispose();
    }
}
