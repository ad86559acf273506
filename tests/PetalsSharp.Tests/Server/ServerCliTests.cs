using System.Diagnostics;
using PetalsSharp.Tests.Cli;
using PetalsSharp.Wire.V1;
using Xunit;

namespace PetalsSharp.Tests.Server;

/// <summary>The real <c>petals server</c> process: the "listening on" line, serving, clean stop, bad spans.</summary>
[Trait("Category", "Processes")]
public sealed class ServerCliTests
{
    [Theory]
    [InlineData("5:3", "START < END")]
    [InlineData("x", "START:END")]
    [InlineData("0:9", "outside the model")]
    [InlineData("-1:2", "START < END")]
    public async Task A_bad_span_is_one_line_on_stderr_and_a_non_zero_exit(string blocks, string message)
    {
        var r = await CliRunner.RunAsync("server", "--model", TestData.Path("llama-gqa"), "--blocks", blocks, "--port", "0");
        Assert.NotEqual(0, r.ExitCode);
        var line = Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("error:", line);
        Assert.Contains(message, line);
    }

    /// <remarks>
    /// The server re-executes itself with a 4 MB gen-0 budget (<c>ServerGen0</c>) unless the operator set one: the
    /// process that prints the address has the same PID, and the variable in its environment.
    /// </remarks>
    [Theory]
    [InlineData(null, "0x400000")]
    [InlineData("0x800000", "0x800000")]
    public async Task The_server_prints_its_address_serves_and_stops_on_SIGTERM(string? operatorGen0, string expectedGen0)
    {
        var psi = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        psi.Environment["DOTNET_GCgen0size"] = operatorGen0;
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "petals.dll"));
        foreach (var a in new[] { "server", "--model", TestData.Path("llama-gqa"), "--blocks", "1:3", "--host", "127.0.0.1", "--port", "0" })
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        try
        {
            var line = await p.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromMinutes(2));
            Assert.NotNull(line);
            Assert.Matches(@"^listening on 127\.0\.0\.1:\d+$", line);
            using var client = new ServerClient(line!["listening on ".Length..]);
            var info = await client.Raw.InfoAsync(new InfoRequest());
            Assert.Equal((1, 3), (info.StartBlock, info.EndBlock));
            var environment = (await File.ReadAllTextAsync($"/proc/{p.Id}/environ")).Split('\0');
            Assert.Contains($"DOTNET_GCgen0size={expectedGen0}", environment);
            using (Process.Start("kill", ["-TERM", p.Id.ToString()])) { }
            await p.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(1));
            Assert.Equal(0, p.ExitCode);
            var log = await stderr;
            Assert.Contains("blocks 1:3", log);
            Assert.Contains("MB of weights", log);
        }
        finally
        {
            if (!p.HasExited) p.Kill(entireProcessTree: true);
        }
    }
}
