using PetalsSharp.Models.Quant;
using PetalsSharp.Models.Weights;
using static TorchSharp.torch;

namespace PetalsSharp.Models;

/// <summary>
/// A Hugging Face model folder opened for selective loading: config.json is parsed at once, but tensors are
/// read only when a block or the client-side ends are asked for, so a server touches just its span.
/// Every tensor is checked against the family's expected name and shape.
/// </summary>
public sealed class Checkpoint : IDisposable
{
    Checkpoint(string directory, ModelConfig config, WeightStore weights)
    {
        Directory = directory;
        Config = config;
        Weights = weights;
    }

    public string Directory { get; }
    public ModelConfig Config { get; }
    public WeightStore Weights { get; }

    public static Checkpoint Open(string directory)
    {
        var config = ModelConfigLoader.Load(directory);
        return new Checkpoint(directory, config, WeightStore.Open(directory));
    }

    /// <summary>
    /// Loads block <paramref name="index"/>; weights are stored in <paramref name="dtype"/>, its linears packed in
    /// <paramref name="quant"/> when that is a block format (quantized at load, a chunk of rows at a time).
    /// </summary>
    public DecoderBlock LoadBlock(int index, ScalarType dtype = ScalarType.Float32, Device? device = null, QuantFormat quant = QuantFormat.None)
    {
        if (index < 0 || index >= Config.NumLayers)
            throw new ArgumentOutOfRangeException(nameof(index), $"block {index} is outside [0, {Config.NumLayers})");
        var weights = Load(Config.Family.BlockTensors(Config, index), dtype, device, quant);
        return Config.Family.CreateBlock(Config, index, weights, quant);
    }

    /// <summary>Loads blocks <c>[start, end)</c>, reporting progress after each one.</summary>
    public LocalBlockStack LoadBlocks(int start, int end, ScalarType dtype = ScalarType.Float32, Device? device = null,
        IProgress<int>? progress = null, QuantFormat quant = QuantFormat.None)
    {
        if (start < 0 || end > Config.NumLayers || start >= end)
            throw new ArgumentOutOfRangeException(nameof(start), $"span {start}:{end} is not inside [0, {Config.NumLayers}]");
        var blocks = new List<DecoderBlock>();
        for (int i = start; i < end; i++)
        {
            blocks.Add(LoadBlock(i, dtype, device, quant));
            progress?.Report(i - start + 1);
        }
        return new LocalBlockStack(Config, blocks);
    }

    /// <summary>Loads what the client keeps: embeddings, final norm and LM head.</summary>
    /// <remarks>With <paramref name="quant"/> the embeddings and the LM head are packed in it (the norms stay exact).</remarks>
    public ModelEnds LoadEnds(ScalarType dtype = ScalarType.Float32, Device? device = null, QuantFormat quant = QuantFormat.None) =>
        Config.Family.CreateEnds(Config, Load(Config.Family.EndTensors(Config), dtype, device, quant), quant);

    /// <summary>
    /// Fingerprint of block <paramref name="index"/>'s weights as stored in the files (see
    /// <see cref="WeightStore.ContentHash"/>): equal fingerprints mean the same weights, whatever dtype serves them.
    /// </summary>
    public string BlockFingerprint(int index)
    {
        var hash = new System.IO.Hashing.XxHash128();
        foreach (var spec in Config.Family.BlockTensors(Config, index))
            hash.Append(System.Text.Encoding.UTF8.GetBytes(spec.Name + "=" + Weights.ContentHash(spec.Name) + ";"));
        return Convert.ToHexStringLower(hash.GetCurrentHash());
    }

    /// <summary>One fingerprint over a span's block fingerprints.</summary>
    public static string SpanFingerprint(IEnumerable<string> blockFingerprints) =>
        Convert.ToHexStringLower(System.IO.Hashing.XxHash128.Hash(System.Text.Encoding.UTF8.GetBytes(string.Join(",", blockFingerprints))));

    Dictionary<string, Tensor> Load(IEnumerable<TensorSpec> specs, ScalarType dtype, Device? device, QuantFormat quant = QuantFormat.None)
    {
        if (quant != QuantFormat.None && device is not null && device.type != TorchSharp.DeviceType.CPU)
            throw new NotSupportedException($"{quant.Name()} weights are computed on the CPU only (asked for {device})");
        var result = new Dictionary<string, Tensor>();
        foreach (var spec in specs)
        {
            var t = spec.QuantizedBy(quant) ? QuantCache.Load(Weights, spec, quant) : Weights.Load(spec.Name, dtype, spec.Shape);
            result[spec.Name] = device is null || device.type == TorchSharp.DeviceType.CPU ? t : t.to(device);
        }
        return result;
    }

    public void Dispose() => Weights.Dispose();
}
