using System.CommandLine;
using PetalsSharp.Client;
using PetalsSharp.Models;
using PetalsSharp.Wire.V1;
using static TorchSharp.torch;

namespace PetalsSharp.Cli.Commands;

/// <summary>
/// Opens the model a command names: all blocks locally, or, with <c>--peers</c>, only the client-side parts
/// with the blocks on those servers.
/// </summary>
public static class ModelOpener
{
    public static Option<string> PeersOption() => new("--peers")
    {
        Description = "Comma-separated HOST:PORT of servers that together cover every block (runs the blocks remotely)",
    };

    public static Option<string> CompressionOption() => new("--compression")
    {
        Description = "Activation compression on the wire: none (default), f16, bf16, int8",
        DefaultValueFactory = _ => "none",
    };

    public static Compression ParseCompression(string value) => value.ToLowerInvariant() switch
    {
        "none" => Compression.None,
        "f16" or "float16" or "fp16" => Compression.Float16,
        "bf16" or "bfloat16" => Compression.Bfloat16,
        "int8" or "int8-blockwise" => Compression.Int8Blockwise,
        _ => throw new CliException($"--compression must be none, f16, bf16 or int8 (got '{value}')"),
    };

    public static async Task<CausalLM> OpenAsync(string modelDir, ScalarType dtype, string? peers = null,
        Compression compression = Compression.None, Action<string>? onRoute = null, CancellationToken ct = default)
    {
        if (!Directory.Exists(modelDir)) throw new CliException($"model folder not found: {modelDir}");
        if (string.IsNullOrWhiteSpace(peers)) return CausalLM.Load(modelDir, new ModelLoadOptions(dtype));
        var options = new RemoteOptions { Compression = compression, OnRoute = onRoute };
        return await DistributedModel.ConnectAsync(modelDir, peers.Split(','), options, new ModelLoadOptions(dtype), ct);
    }
}
