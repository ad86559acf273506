using System.Text.Json.Nodes;
using PetalsSharp.Models;
using PetalsSharp.Models.Weights;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace PetalsSharp.Tests.Adapters;

/// <summary>
/// Writes random PEFT LoRA adapters for a fixture model, llama-gqa unless told (as <c>peft</c> saves them: <c>adapter_config.json</c> and
/// <c>adapter_model.safetensors</c>) and the checkpoint with the adapter merged into the base weights, which is the
/// independent reference every adapted output is compared with.
/// </summary>
internal static class TestAdapter
{
    public static readonly string ModelDir = TestData.Path("llama-gqa");
    public static readonly string[] AllModules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    /// <summary>PEFT's short names of every module the family lets an adapter target (q_proj, query_key_value, w1, ...).</summary>
    public static string[] ModulesOf(string fixture)
    {
        var model = ModelConfigLoader.Load(TestData.Path(fixture));
        return ((PetalsSharp.Models.Lora.ILoraTargets)model.Family).LoraModules(model).Select(m => m.Split('.')[^1]).Distinct().ToArray();
    }

    public static string NewDir(string name = "lora")
    {
        var dir = Path.Combine(Path.GetTempPath(), "petals-lora-" + Guid.NewGuid().ToString("N")[..8], name);
        Directory.CreateDirectory(dir);
        return dir;
    }

    /// <summary>
    /// A random adapter in <paramref name="dir"/> (r = 4, alpha = 8 unless <paramref name="config"/> edits them).
    /// B is nonzero (a freshly initialised PEFT adapter has B = 0, which would hide every bug). <paramref name="tensors"/>
    /// may corrupt the tensor list before it is written.
    /// </summary>
    public static string Write(string dir, Action<JsonObject>? config = null, Action<List<(string Name, Tensor Value)>>? tensors = null,
        int seed = 1, string fixture = "llama-gqa")
    {
        var modelDir = TestData.Path(fixture);
        var allModules = ModulesOf(fixture);
        var json = new JsonObject
        {
            ["peft_type"] = "LORA", ["task_type"] = "CAUSAL_LM", ["base_model_name_or_path"] = fixture,
            ["r"] = 4, ["lora_alpha"] = 8, ["lora_dropout"] = 0.05, ["fan_in_fan_out"] = false, ["bias"] = "none",
            ["target_modules"] = new JsonArray(allModules.Select(m => (JsonNode?)m).ToArray()),
            ["layers_to_transform"] = null, ["modules_to_save"] = null, ["inference_mode"] = true,
        };
        config?.Invoke(json);
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), json.ToJsonString());

        int r = Math.Max(1, json["r"]!.GetValue<int>());   // tests of a bad r still need writable tensors
        var targets = json["target_modules"] is JsonArray a ? a.Select(n => n!.GetValue<string>()).ToHashSet() : allModules.ToHashSet();
        var layers = json["layers_to_transform"] is JsonArray l ? l.Select(n => n!.GetValue<int>()).ToHashSet() : null;
        var model = ModelConfigLoader.Load(modelDir);
        var generator = new Generator((ulong)seed);
        var list = new List<(string, Tensor)>();
        for (int layer = 0; layer < model.NumLayers; layer++)
        {
            if (layers is not null && !layers.Contains(layer)) continue;
            foreach (var spec in model.Family.BlockTensors(model, layer).Where(s => s.Role == TensorRole.Matrix))
            {
                var module = spec.Name[..^".weight".Length];
                if (!targets.Contains(module.Split('.')[^1])) continue;
                long outF = spec.Shape[0], inF = spec.Shape[1];
                list.Add(($"base_model.model.{module}.lora_A.weight", randn([r, inF], generator: generator) * 0.2f));   // [r, in]
                list.Add(($"base_model.model.{module}.lora_B.weight", randn([outF, r], generator: generator) * 0.2f));  // [out, r]
            }
        }
        tensors?.Invoke(list);
        SafeTensorsWriter.Write(Path.Combine(dir, "adapter_model.safetensors"), list);
        foreach (var (_, t) in list) t.Dispose();
        return dir;
    }

    /// <summary>
    /// A copy of the adapter's base fixture (its <c>base_model_name_or_path</c>) with W' = W + (alpha / r) · B A for
    /// every adapted linear, computed here from the adapter's files without the server's code.
    /// </summary>
    public static string WriteMerged(string adapterDir)
    {
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(adapterDir, "adapter_config.json")))!;
        var modelDir = TestData.Path(config["base_model_name_or_path"]!.GetValue<string>());
        var outDir = Path.Combine(Path.GetDirectoryName(adapterDir)!, "merged-" + Path.GetFileName(adapterDir));
        Directory.CreateDirectory(outDir);
        foreach (var f in new[] { "config.json", "generation_config.json" })
            File.Copy(Path.Combine(modelDir, f), Path.Combine(outDir, f), overwrite: true);
        double scale = config["lora_alpha"]!.GetValue<double>() / config["r"]!.GetValue<int>();
        using var adapter = new SafeTensorsFile(Path.Combine(adapterDir, "adapter_model.safetensors"));
        using var base_ = new SafeTensorsFile(Path.Combine(modelDir, "model.safetensors"));
        using var scope = NewDisposeScope();
        var merged = new List<(string, Tensor)>();
        foreach (var name in base_.Entries.Keys)
        {
            var w = base_.Load(name);                                                        // [out, in]
            var module = name.EndsWith(".weight") ? name[..^".weight".Length] : name;
            var a = $"base_model.model.{module}.lora_A.weight";
            if (adapter.Contains(a))
            {
                var delta = adapter.Load($"base_model.model.{module}.lora_B.weight").to(ScalarType.Float64)
                    .matmul(adapter.Load(a).to(ScalarType.Float64)) * scale;                  // [out, in]
                w = (w.to(ScalarType.Float64) + delta).to(ScalarType.Float32);
            }
            merged.Add((name, w.contiguous()));
        }
        SafeTensorsWriter.Write(Path.Combine(outDir, "model.safetensors"), merged);
        return outDir;
    }
}
