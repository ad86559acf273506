using PetalsSharp.Server;
using PetalsSharp.Tests.Server;
using PetalsSharp.Tests.Weights;
using PetalsSharp.Wire.V1;
using Xunit;

namespace PetalsSharp.Tests.Cli;

/// <summary>Weights default to the checkpoint's torch_dtype; <c>--dtype</c> still overrides it.</summary>
[Trait("Category", "Processes")]
public sealed class DtypeDefaultTests
{
    [Fact]
    public async Task Server_holds_a_bf16_checkpoint_in_bf16_unless_told_otherwise()
    {
        using var dir = new TempDir();
        var created = await CliRunner.RunAsync("create-model", "--family", "llama", "--hidden-size", "64", "--layers", "2",
            "--heads", "4", "--vocab-size", "300", "--dtype", "bf16", "--out", dir.Path);
        Assert.True(created.ExitCode == 0, created.Stderr);

        Assert.Equal("bfloat16", await ServedDtypeAsync(dir.Path));
        Assert.Equal("float32", await ServedDtypeAsync(dir.Path, "--dtype", "f32"));
    }

    [Fact]
    public async Task Server_holds_an_f32_checkpoint_in_f32_unless_told_otherwise()
    {
        var fixture = TestData.Path("llama-gqa");
        Assert.Equal("float32", await ServedDtypeAsync(fixture));
        Assert.Equal("bfloat16", await ServedDtypeAsync(fixture, "--dtype", "bf16"));
    }

    static async Task<string> ServedDtypeAsync(string modelDir, params string[] extra)
    {
        using var server = await ServerProcess.StartAsync(modelDir, 0, 1, ["--throughput", "1", .. extra]);
        using var client = new ServerClient(server.Address);
        var info = await client.Raw.InfoAsync(new InfoRequest());
        await server.StopAsync(TimeSpan.FromSeconds(10));
        return info.WeightsDtype;
    }
}
