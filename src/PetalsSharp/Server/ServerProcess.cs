using System.Diagnostics;

namespace PetalsSharp.Server;

/// <summary>
/// A <c>petals server</c> child process on 127.0.0.1 with an ephemeral port, killed on dispose. Tests, benchmarks and
/// local demos start real servers this way; the address is read from the line the server prints when it listens.
/// </summary>
public sealed class ServerProcess : IDisposable
{
    readonly Process _process;
    readonly System.Text.StringBuilder _log;

    ServerProcess(Process process, string address, System.Text.StringBuilder log)
    {
        _process = process;
        Address = address;
        _log = log;
    }

    /// <summary>The child's process id (for /proc readings such as its resident memory).</summary>
    public int Id => _process.Id;

    /// <summary><c>127.0.0.1:PORT</c> as the server printed it.</summary>
    public string Address { get; }

    /// <summary>The child's process id (tests read its /proc/PID/status and fd table).</summary>
    public int ProcessId => _process.Id;

    /// <summary>Everything the server printed so far (it keeps growing while the server runs).</summary>
    public string Log
    {
        get { lock (_log) return _log.ToString(); }
    }

    /// <summary>
    /// How long a child may take to print its address. A minute covers tests; a benchmark loading gigabytes of
    /// weights on a busy box sets more before starting its server.
    /// </summary>
    public static TimeSpan StartTimeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>Where petals.dll is: next to the running program unless told otherwise.</summary>
    public static string DefaultPetalsDll => Path.Combine(AppContext.BaseDirectory, "petals.dll");

    public static Task<ServerProcess> StartAsync(string modelDir, int start, int end, params string[] extra) =>
        StartCoreAsync(modelDir, $"{start}:{end}", ["--blocks", $"{start}:{end}", .. extra]);

    /// <summary>As above, with extra environment variables for the child (e.g. HF_ENDPOINT, HF_HUB_CACHE).</summary>
    public static Task<ServerProcess> StartAsync(string modelDir, int start, int end, IReadOnlyDictionary<string, string> environment,
        params string[] extra) =>
        StartCoreAsync(modelDir, $"{start}:{end}", ["--blocks", $"{start}:{end}", .. extra], environment);

    /// <summary>A server that chooses its blocks itself: give <c>--num-blocks</c> (or a memory budget) in <paramref name="extra"/>.</summary>
    public static Task<ServerProcess> StartAutoAsync(string modelDir, params string[] extra) => StartCoreAsync(modelDir, "auto", extra);

    static async Task<ServerProcess> StartCoreAsync(string modelDir, string label, string[] extra,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var psi = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add(DefaultPetalsDll);
        psi.Environment[ParentWatchdog.Variable] = Environment.ProcessId.ToString();
        foreach (var (key, value) in environment ?? new Dictionary<string, string>()) psi.Environment[key] = value;
        foreach (var a in new[] { "server", "--model", modelDir, "--host", "127.0.0.1", "--port", "0" }.Concat(extra))
            psi.ArgumentList.Add(a);
        var process = Process.Start(psi)!;
        var listening = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var log = new System.Text.StringBuilder();
        void OnLine(string? line)
        {
            if (line is null) return;
            lock (log) log.AppendLine(line);
            const string marker = "listening on ";
            var at = line.IndexOf(marker, StringComparison.Ordinal);
            if (at >= 0) listening.TrySetResult(line[(at + marker.Length)..].Trim());
        }
        process.OutputDataReceived += (_, e) => OnLine(e.Data);
        process.ErrorDataReceived += (_, e) => OnLine(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        process.EnableRaisingEvents = true;
        process.Exited += (_, _) => listening.TrySetException(new InvalidOperationException($"server {label} exited early:\n{log}"));
        var timeout = StartTimeout;
        var done = await Task.WhenAny(listening.Task, Task.Delay(timeout));
        if (done != listening.Task)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"server {label} did not start in {timeout.TotalSeconds:F0} s:\n{log}");
        }
        return new ServerProcess(process, await listening.Task, log);
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    static extern int kill(int pid, int signal);

    /// <summary>Asks the server to stop (SIGTERM: it announces OFFLINE and closes sessions), killing it after the timeout.</summary>
    public async Task StopAsync(TimeSpan timeout)
    {
        if (_process.HasExited) return;
        if (OperatingSystem.IsWindows() || kill(_process.Id, 15) != 0) { Kill(); return; }
        using var cts = new CancellationTokenSource(timeout);
        try { await _process.WaitForExitAsync(cts.Token); }
        catch (OperationCanceledException) { Kill(); }
    }

    /// <summary>Kills the process at once, as a crash would (SIGKILL).</summary>
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
