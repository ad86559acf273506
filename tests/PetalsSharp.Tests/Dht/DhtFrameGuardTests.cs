using System.Diagnostics;
using Grpc.Core;
using PetalsSharp.Server;
using PetalsSharp.Tests.Server;
using Xunit;

namespace PetalsSharp.Tests.Dht;

/// <summary>
/// A gRPC frame with an absurd length prefix sent to the DHT service of a standalone <c>petals dht</c> node and of
/// a server's own DHT node (issue 23, attack 9): RESOURCE_EXHAUSTED with a message, and the node keeps serving.
/// </summary>
[Trait("Category", "Processes")]
[Collection(DhtSocketsCollection.Name)]
public sealed class DhtFrameGuardTests
{
    const string Service = "petals.dht.v1.DhtService";

    /// <summary>Not compressed, length 0xFFFFFFF0, then a few bytes of "message".</summary>
    static readonly byte[] Frame = [0, 0xFF, 0xFF, 0xFF, 0xF0, 1, 2, 3, 4];

    static async Task AssertRefusedAsync(string address)
    {
        foreach (var method in new[] { "Ping", "Store", "FindValue" })
        {
            var (status, message) = await HostileWireTests.PostFrameAsync(address, method, Frame, Service);
            Assert.True(status == (int)StatusCode.ResourceExhausted, $"{method}: status {status} '{message}'");
            Assert.Contains("4294967280", message);
        }
        // Still serving: a real node joins through it.
        await using var node = await PetalsSharp.Dht.DhtNode.StartAsync(DhtTestSwarm.Options());
        await node.BootstrapAsync([address]);
        Assert.True(node.Table.Count > 0, $"joining through {address} found nobody");
    }

    [Fact]
    public async Task A_standalone_dht_node_refuses_an_absurd_frame_with_a_clear_status()
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { ServerProcess.DefaultPetalsDll, "dht", "--host", "127.0.0.1", "--port", "0" }) psi.ArgumentList.Add(a);
        using var process = Process.Start(psi)!;
        try
        {
            _ = process.StandardError.ReadToEndAsync();
            var line = await process.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60));
            Assert.NotNull(line);
            Assert.StartsWith("initial peers: ", line);
            var (address, _) = PetalsSharp.Dht.DhtAddress.Parse(line["initial peers: ".Length..]);
            await AssertRefusedAsync(address);
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
    }

    [Fact]
    public async Task A_servers_dht_node_refuses_an_absurd_frame_with_a_clear_status()
    {
        using var server = await ServerProcess.StartAsync(TestData.Path("llama-gqa"), 0, 3, "--new-swarm");
        await AssertRefusedAsync(server.Address);
    }
}
