using System.Diagnostics;
using Xunit;
using Xunit.Abstractions;

namespace PetalsSharp.Tests.Packaging;

/// <summary>
/// `dotnet pack` makes `petals` an installable dotnet tool: pack it, install it into a temporary tool path
/// (never the user's global tools), and run `petals --help` and `petals demo` from the installed copy.
/// </summary>
[Trait("Category", "Processes")]
public sealed class ToolPackageTests(ITestOutputHelper output)
{
#if DEBUG
    const string Configuration = "Debug";
#else
    const string Configuration = "Release";
#endif

    [Fact]
    public async Task PackedToolInstallsAndRunsTheDemo()
    {
        string repo = FindRepoRoot();
        string work = Path.Combine(Path.GetTempPath(), "petals-tool-" + Guid.NewGuid().ToString("N")[..8]);
        string feed = Path.Combine(work, "nupkg"), tools = Path.Combine(work, "tools");
        try
        {
            // --no-build: the test run has just built the CLI; packing only publishes it into its own folder.
            var pack = await RunAsync("dotnet", ["pack", Path.Combine(repo, "src", "PetalsSharp.Cli"), "-c", Configuration,
                "--no-build", "-o", feed], TimeSpan.FromMinutes(5));
            Assert.True(pack.ExitCode == 0, pack.Output);
            Assert.Single(Directory.GetFiles(feed, "PetalsSharp.Cli.*.nupkg"));

            var install = await RunAsync("dotnet", ["tool", "install", "--tool-path", tools, "--add-source", feed,
                "PetalsSharp.Cli"], TimeSpan.FromMinutes(5));
            Assert.True(install.ExitCode == 0, install.Output);
            string petals = Path.Combine(tools, "petals");
            Assert.True(File.Exists(petals), $"no petals shim in {tools}");

            var help = await RunAsync(petals, ["--help"], TimeSpan.FromMinutes(1));
            Assert.Equal(0, help.ExitCode);
            Assert.Contains("demo", help.Output);
            Assert.Contains("server", help.Output);

            var demo = await RunAsync(petals, ["demo"], TimeSpan.FromMinutes(4));
            Assert.True(demo.ExitCode == 0, demo.Output);
            Assert.Contains("client found the servers through the DHT alone", demo.Output);
            Assert.Contains("servers stopped", demo.Output);
        }
        finally
        {
            try { Directory.Delete(work, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "PetalsSharp.slnx"))) return dir.FullName;
        throw new InvalidOperationException("repository root (PetalsSharp.slnx) not found above " + AppContext.BaseDirectory);
    }

    async Task<(int ExitCode, string Output)> RunAsync(string file, string[] args, TimeSpan timeout)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["PETALS_CACHE"] = Path.Combine(Path.GetTempPath(), "petals-sharp-tests-cache");
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(timeout);
        try { await p.WaitForExitAsync(cts.Token); }
        catch (OperationCanceledException)
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} {string.Join(' ', args)} did not finish in {timeout}");
        }
        string text = await stdout + await stderr;
        output.WriteLine($"$ {Path.GetFileName(file)} {string.Join(' ', args)}  (exit {p.ExitCode})\n{text}");
        return (p.ExitCode, text);
    }
}
