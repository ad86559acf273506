using System.Diagnostics;

namespace PetalsSharp.Tests.Dashboard;

/// <summary>
/// Debian's headless Chromium for browser tests. Missing, it is installed with apt-get when the tests run as root
/// (as on CI and the development machines); otherwise the tests skip with the reason.
/// </summary>
static class Chromium
{
    public const string Path = "/usr/bin/chromium";

    static readonly Lazy<string?> Missing = new(Install);

    /// <summary>Null when Chromium is there (installing it if needed), else why it is not.</summary>
    public static string? WhyMissing => Missing.Value;

    static string? Install()
    {
        if (File.Exists(Path)) return null;
        if (!OperatingSystem.IsLinux()) return "browser tests need Debian's chromium package (Linux only)";
        if (Environment.UserName != "root") return $"{Path} is missing and installing it needs root: run 'apt-get install -y chromium'";
        // A fresh machine may have no package lists yet; update only if the first install attempt fails.
        if (Run("apt-get", "install -y --no-install-recommends chromium") != 0)
        {
            Run("apt-get", "update");
            Run("apt-get", "install -y --no-install-recommends chromium");
        }
        return File.Exists(Path) ? null : $"'apt-get install -y chromium' did not provide {Path}";
    }

    static int Run(string file, string arguments)
    {
        var psi = new ProcessStartInfo(file, arguments) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.Environment["DEBIAN_FRONTEND"] = "noninteractive";
        using var p = Process.Start(psi)!;
        p.OutputDataReceived += (_, _) => { };
        p.ErrorDataReceived += (_, _) => { };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        if (!p.WaitForExit(TimeSpan.FromMinutes(10))) { p.Kill(entireProcessTree: true); return -1; }
        return p.ExitCode;
    }
}
