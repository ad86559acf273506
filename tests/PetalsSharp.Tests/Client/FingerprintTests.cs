using PetalsSharp.Client;
using PetalsSharp.Models;
using PetalsSharp.Models.Weights;
using PetalsSharp.Server;
using PetalsSharp.Swarm;
using PetalsSharp.Tests.Swarm;
using Xunit;

namespace PetalsSharp.Tests.Client;

/// <summary>A client refuses a server whose served weights differ from its own checkpoint's.</summary>
[Trait("Category", "Processes")]
[Collection(LlamaSwarmCollection.Name)]
public sealed class FingerprintTests
{
    [Fact]
    public async Task A_server_with_different_weights_is_refused()
    {
        var dir = Path.Combine(Directory.CreateTempSubdirectory("petals-fp").FullName, "llama-gqa");
        Directory.CreateDirectory(dir);
        File.Copy(Path.Combine(LlamaSwarm.ModelDir, "config.json"), Path.Combine(dir, "config.json"));
        using (var src = Checkpoint.Open(LlamaSwarm.ModelDir))
        {
            var names = src.Weights.Names.OrderBy(n => n, StringComparer.Ordinal).ToList();
            SafeTensorsWriter.Write(Path.Combine(dir, "model.safetensors"), names.Select(n =>
                (n, n == "model.layers.1.mlp.up_proj.weight" ? src.Weights.Load(n) * 1.001f : src.Weights.Load(n))));
        }
        using var tampered = await ServerProcess.StartAsync(dir, 0, 3);
        var e = await Assert.ThrowsAsync<SwarmException>(() => DistributedModel.ConnectAsync(LlamaSwarm.ModelDir, [tampered.Address]));
        Assert.Contains("different weights for block 1", e.Message);
        using var trusting = await DistributedModel.ConnectAsync(LlamaSwarm.ModelDir, [tampered.Address], new RemoteOptions { VerifyWeights = false });
    }
}
