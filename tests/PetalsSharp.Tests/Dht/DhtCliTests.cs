using System.Diagnostics;
using PetalsSharp.Dht;
using PetalsSharp.Tests.Cli;
using Xunit;

namespace PetalsSharp.Tests.Dht;

/// <summary><c>petals dht</c> through the real executable.</summary>
[Trait("Category", "Processes")]
[Collection(DhtSocketsCollection.Name)]
public sealed class DhtCliTests
{
    [Fact]
    public async Task PrintsTheInitialPeersLineServesAndStopsOnSigterm()
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "petals.dll"), "dht", "--host", "127.0.0.1", "--port", "0" })
            psi.ArgumentList.Add(a);
        using var process = Process.Start(psi)!;
        try
        {
            var stderr = process.StandardError.ReadToEndAsync();
            var line = await process.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(30));
            Assert.NotNull(line);
            Assert.StartsWith("initial peers: 127.0.0.1:", line);
            var peer = line["initial peers: ".Length..];
            var (address, id) = DhtAddress.Parse(peer);
            Assert.NotNull(id);

            // The printed address works as given, and as plain HOST:PORT.
            await using var node = await DhtNode.StartAsync(DhtTestSwarm.Options());
            await node.BootstrapAsync([peer]);
            await node.BootstrapAsync([address]);
            Assert.NotNull(node.Table.Find(id!.Value));

            using (var term = Process.Start("kill", ["-TERM", process.Id.ToString()])) await term.WaitForExitAsync();
            await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(15));
            Assert.True(process.ExitCode == 0, $"exit {process.ExitCode}: {await stderr}");
            Assert.Contains($"DHT node {id} serving at", await stderr);   // the node's log goes to stderr, stdout stays one line
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
    }

    [Fact]
    public async Task BadArgumentsAreOneLineErrors()
    {
        var corrupt = Path.Combine(Path.GetTempPath(), $"petals-bad-{Guid.NewGuid():N}.id");
        await File.WriteAllTextAsync(corrupt, "garbage");
        try
        {
            var r = await CliRunner.RunAsync("dht", "--port", "0", "--identity", corrupt);
            Assert.NotEqual(0, r.ExitCode);
            Assert.StartsWith($"error: identity file {corrupt} is not a PEM", r.Stderr);
            Assert.Single(r.Stderr.Trim().Split('\n'));
        }
        finally { File.Delete(corrupt); }

        var badPeer = await CliRunner.RunAsync("dht", "--port", "0", "--initial-peers", "nonsense");
        Assert.NotEqual(0, badPeer.ExitCode);
        Assert.Contains("is not a peer address", badPeer.Stderr);

        var help = await CliRunner.RunAsync("dht", "--help");
        Assert.Contains("initial peers: HOST:PORT/ID", help.Stdout);
    }

    [Fact]
    public async Task With_no_join_timeout_an_unreachable_peer_fails_after_one_try()
    {
        var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        int closed = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        var r = await CliRunner.RunAsync("dht", "--host", "127.0.0.1", "--port", "0", "--initial-peers", $"127.0.0.1:{closed}", "--join-timeout", "0");
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains($"could not join the DHT: no initial peer answered (127.0.0.1:{closed}: Unavailable", r.Stderr);
        Assert.DoesNotContain("could not join the DHT yet", r.Stderr);   // no retry was scheduled

        var negative = await CliRunner.RunAsync("dht", "--port", "0", "--join-timeout", "-1");
        Assert.NotEqual(0, negative.ExitCode);
        Assert.Contains("--join-timeout must be between 0 and 86400 seconds", negative.Stderr);
    }
}
