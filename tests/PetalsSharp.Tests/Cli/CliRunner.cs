using System.Diagnostics;

namespace PetalsSharp.Tests.Cli;

/// <summary>Runs the real <c>petals</c> CLI (petals.dll next to the tests) as a child process.</summary>
public static class CliRunner
{
    public sealed record Result(int ExitCode, string Stdout, string Stderr);

    public static Task<Result> RunAsync(params string[] args) => RunAsync(new Dictionary<string, string>(), args);

    /// <summary>Runs with extra environment variables (e.g. HF_ENDPOINT pointing at a fake hub).</summary>
    public static async Task<Result> RunAsync(IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "petals.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["PETALS_CACHE"] = Path.Combine(Path.GetTempPath(), "petals-sharp-tests-cache");
        foreach (var (name, value) in environment) psi.Environment[name] = value;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(3));
        try { await p.WaitForExitAsync(timeout.Token); }
        catch (OperationCanceledException)
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"petals {string.Join(' ', args)} did not finish in 3 minutes");
        }
        return new Result(p.ExitCode, await stdout, await stderr);
    }
}
