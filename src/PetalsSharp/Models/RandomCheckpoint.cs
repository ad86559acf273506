using System.Text.Json;
using PetalsSharp.Models.Weights;
using static TorchSharp.torch;

namespace PetalsSharp.Models;

/// <summary>
/// Writes a random-weight HF checkpoint for demos and benchmarks. Weights follow the scheme of the reference
/// fixtures (std gain/√in for matrices, not HF's 0.02) so that attention and logits are far from uniform and
/// greedy decoding does something visible.
/// </summary>
public static class RandomCheckpoint
{
    /// <summary>Writes config.json, generation_config.json and model.safetensors into <paramref name="outDir"/>.</summary>
    public static void Write(ModelConfig config, string outDir, int seed, ScalarType dtype = ScalarType.Float32,
        IProgress<(int Done, int Total)>? progress = null)
    {
        config.Validate("create-model");
        Directory.CreateDirectory(outDir);
        var json = config.ToHfJson();
        json["torch_dtype"] = dtype switch { ScalarType.BFloat16 => "bfloat16", ScalarType.Float16 => "float16", _ => "float32" };
        var indented = new JsonSerializerOptions { WriteIndented = true };
        File.WriteAllText(Path.Combine(outDir, "config.json"), json.ToJsonString(indented) + "\n");
        var generation = new System.Text.Json.Nodes.JsonObject
        {
            ["bos_token_id"] = config.BosTokenId,
            ["eos_token_id"] = config.EosTokenIds.FirstOrDefault(),
        };
        File.WriteAllText(Path.Combine(outDir, "generation_config.json"), generation.ToJsonString(indented) + "\n");

        var specs = config.Family.EndTensors(config)
            .Concat(Enumerable.Range(0, config.NumLayers).SelectMany(i => config.Family.BlockTensors(config, i)))
            .OrderBy(s => s.Name, StringComparer.Ordinal).ToList();
        var generator = new Generator((ulong)seed);
        // The writer needs every shape before the first byte, so all tensors exist at once (≈ the file size).
        var tensors = new List<(string, Tensor)>();
        try
        {
            foreach (var spec in specs)
            {
                tensors.Add((spec.Name, Sample(spec, generator, dtype)));
                progress?.Report((tensors.Count, specs.Count));
            }
            SafeTensorsWriter.Write(Path.Combine(outDir, "model.safetensors"), tensors,
                new Dictionary<string, string> { ["format"] = "pt" });
        }
        finally
        {
            foreach (var (_, t) in tensors) t.Dispose();
        }
    }

    static Tensor Sample(TensorSpec spec, Generator g, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        var n = randn(spec.Shape, generator: g);
        var t = spec.Role switch
        {
            TensorRole.Embedding => n * 0.5,
            TensorRole.Matrix => n * (spec.Gain / Math.Sqrt(spec.Shape[^1])),
            TensorRole.NormScale => n * 0.1 + 1.0,
            TensorRole.Bias => n * 0.1,
            _ => throw new ArgumentOutOfRangeException(nameof(spec)),
        };
        return t.to(dtype).MoveToOuterDisposeScope();
    }
}
