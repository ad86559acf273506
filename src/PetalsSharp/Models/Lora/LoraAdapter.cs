using PetalsSharp.Models.Weights;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PetalsSharp.Models.Lora;

/// <summary>
/// A PEFT LoRA adapter loaded for one model: for each targeted linear, <c>A [r, in]</c> and <c>B [out, r]</c>
/// (B pre-multiplied by the scale), so the module computes <c>y = x Wᵀ + b + scale · (x Aᵀ) Bᵀ</c>. The low-rank
/// form is kept instead of merging into W, so one copy of the base weights serves every adapter and plain requests.
/// </summary>
public sealed class LoraAdapter : ILinearAdapter, IDisposable
{
    public const string WeightsFileName = "adapter_model.safetensors";
    const string PeftPrefix = "base_model.model.";

    readonly Dictionary<(int Block, string Module), (Tensor A, Tensor ScaledB)> _weights;

    LoraAdapter(string name, string dir, LoraConfig config, Dictionary<(int, string), (Tensor, Tensor)> weights)
    {
        Name = name;
        Directory = dir;
        Config = config;
        _weights = weights;
    }

    /// <summary>What requests call it by (<c>active_adapter</c>).</summary>
    public string Name { get; }
    public string Directory { get; }
    public LoraConfig Config { get; }

    /// <summary>Every (block, module) the adapter changes.</summary>
    public IReadOnlyCollection<(int Block, string Module)> Targets => _weights.Keys;

    public Tensor? Delta(int block, string module, Tensor x)
    {
        if (!_weights.TryGetValue((block, module), out var w)) return null;
        var down = F.linear(x, Ops.Cast(w.A, x));                  // [..., r]
        return F.linear(down, Ops.Cast(w.ScaledB, x));             // [..., out]
    }

    /// <summary>
    /// The factors for one module: <c>A [r, in]</c> and <c>scale · B [out, r]</c>, float32 (the fused decode path
    /// applies them as two small products). False when the adapter leaves the module alone.
    /// </summary>
    public bool TryGetFactors(int block, string module, out Tensor a, out Tensor scaledB)
    {
        var found = _weights.TryGetValue((block, module), out var w);
        (a, scaledB) = found ? (w.A, w.ScaledB) : (null!, null!);
        return found;
    }

    /// <summary><c>W + scale · B A</c>: the base weight <c>[out, in]</c> with this adapter merged (tests compare against it).</summary>
    public Tensor Merge(int block, string module, Tensor weight) =>
        _weights.TryGetValue((block, module), out var w) ? weight + w.ScaledB.matmul(w.A) : weight.clone();

    /// <summary>
    /// Loads <paramref name="dir"/> (PEFT format) and checks it against <paramref name="model"/>: every target
    /// module exists in the family's block, layers exist, every tensor has the shape its base weight implies, values
    /// are finite, and the file holds nothing else.
    /// </summary>
    /// <exception cref="LoraException">The adapter is missing, malformed or does not fit the model.</exception>
    public static LoraAdapter Load(string name, string dir, ModelConfig model)
    {
        LoraNames.Check(name);
        if (!System.IO.Directory.Exists(dir)) throw new LoraException($"adapter '{name}': folder not found: {dir}");
        var config = LoraConfig.Load(dir);
        var where = $"adapter '{name}' ({dir})";
        if (model.Family is not ILoraTargets family)
            throw new LoraException($"{where}: model type '{model.ModelType}' does not support LoRA adapters yet");

        var expected = ExpectedTensors(where, config, model, family);
        var path = Path.Combine(dir, WeightsFileName);
        if (!File.Exists(path))
            throw new LoraException(File.Exists(Path.Combine(dir, "adapter_model.bin"))
                ? $"{where}: only {WeightsFileName} is supported, not adapter_model.bin (convert it with safetensors)"
                : $"{where}: {WeightsFileName} not found");
        using var file = OpenWeights(where, path);
        foreach (var entry in file.Entries.Values)
        {
            if (!expected.TryGetValue(entry.Name, out var spec))
                throw new LoraException($"{where}: unknown tensor '{entry.Name}' (not a lora_A/lora_B weight of a targeted module in a transformed layer)");
            if (!entry.Shape.SequenceEqual(spec.Shape))
                throw new LoraException($"{where}: tensor '{entry.Name}' has shape [{string.Join(", ", entry.Shape)}], the model needs [{string.Join(", ", spec.Shape)}]");
            if (!SafeTensorsDType.TryParse(entry.DType, out var dtype, out _) || dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16 or ScalarType.Float64))
                throw new LoraException($"{where}: tensor '{entry.Name}' has dtype {entry.DType}; LoRA weights must be floating point");
        }
        var missing = expected.Keys.Where(k => !file.Contains(k)).Order(StringComparer.Ordinal).ToList();
        if (missing.Count > 0)
            throw new LoraException($"{where}: {missing.Count} tensor(s) missing from {WeightsFileName}, e.g. '{missing[0]}'");

        var weights = new Dictionary<(int, string), (Tensor, Tensor)>();
        try
        {
            foreach (var group in expected.Values.GroupBy(s => (s.Block, s.Module)))
            {
                var a = LoadFinite(where, file, group.Single(s => !s.IsB).Name);    // [r, in]
                var b = LoadFinite(where, file, group.Single(s => s.IsB).Name);     // [out, r]
                using (b) weights[group.Key] = (a, b.mul(config.Scale).DetachFromDisposeScope());
            }
        }
        catch
        {
            foreach (var (a, b) in weights.Values) { a.Dispose(); b.Dispose(); }
            throw;
        }
        return new LoraAdapter(name, dir, config, weights);
    }

    sealed record Spec(string Name, int Block, string Module, bool IsB, long[] Shape);

    /// <summary>The tensor names and shapes the adapter must hold, from the model's block tensors and the config.</summary>
    static Dictionary<string, Spec> ExpectedTensors(string where, LoraConfig config, ModelConfig model, ILoraTargets family)
    {
        foreach (var layer in config.LayersToTransform ?? [])
            if (layer < 0 || layer >= model.NumLayers)
                throw new LoraException($"{where}: layers_to_transform names block {layer}, the model has blocks 0..{model.NumLayers - 1}");
        var modules = family.LoraModules(model);
        var known = modules.Select(m => m.Split('.')[^1]).Distinct().ToList();
        var matched = new HashSet<string>();
        var expected = new Dictionary<string, Spec>(StringComparer.Ordinal);
        for (int layer = 0; layer < model.NumLayers; layer++)
        {
            var shapes = model.Family.BlockTensors(model, layer).ToDictionary(t => t.Name, t => t.Shape);
            foreach (var module in modules)
            {
                var weightName = shapes.Keys.Single(n => n.EndsWith("." + module + ".weight", StringComparison.Ordinal));
                var fullName = weightName[..^".weight".Length];
                if (config.TargetModules is { } list)
                    foreach (var t in list.Where(t => config.Targets(fullName, t))) matched.Add(t);
                if (!config.TransformsLayer(layer) || !config.Targets(fullName)) continue;
                if (config.TargetRegex is not null) matched.Add(config.TargetRegex);
                long outF = shapes[weightName][0], inF = shapes[weightName][1];
                var a = $"{PeftPrefix}{fullName}.lora_A.weight";
                var b = $"{PeftPrefix}{fullName}.lora_B.weight";
                expected[a] = new Spec(a, layer, module, false, [config.R, inF]);
                expected[b] = new Spec(b, layer, module, true, [outF, config.R]);
            }
        }
        var unknown = (config.TargetModules ?? [config.TargetRegex!]).Where(t => !matched.Contains(t)).ToList();
        if (unknown.Count > 0)
            throw new LoraException($"{where}: unknown target module{(unknown.Count > 1 ? "s" : "")} {string.Join(", ", unknown.Select(u => $"'{u}'"))} " +
                $"({model.ModelType} blocks have {string.Join(", ", known)})");
        if (expected.Count == 0) throw new LoraException($"{where}: targets no module in any block");
        return expected;
    }

    static SafeTensorsFile OpenWeights(string where, string path)
    {
        try { return new SafeTensorsFile(path); }
        catch (CheckpointException e) { throw new LoraException($"{where}: {e.Message}"); }
    }

    static Tensor LoadFinite(string where, SafeTensorsFile file, string name)
    {
        using var scope = NewDisposeScope();
        var t = file.Load(name, ScalarType.Float32).clone();   // a copy: the file's mapping may go away
        if (!t.isfinite().all().item<bool>())
            throw new LoraException($"{where}: tensor '{name}' has NaN or infinite values");
        return t.DetachFromDisposeScope();
    }

    public void Dispose()
    {
        foreach (var (a, b) in _weights.Values) { a.Dispose(); b.Dispose(); }
        _weights.Clear();
    }
}
