using System.Globalization;
using PetalsSharp.Models;
using PetalsSharp.Models.Weights;
using static TorchSharp.torch;

namespace PetalsSharp.Training;

/// <summary>
/// Trained parameters as a safetensors file: the tensors under Petals'/PEFT names (<c>prompt_embeddings</c>,
/// <c>intermediate_prompt_embeddings</c>, <c>lm_head.lora_A.weight</c>, ...) and <c>__metadata__</c> recording the
/// mode, pre_seq_len, LoRA settings and the model it was trained on.
/// </summary>
public static class TunedFile
{
    /// <summary>Writes <paramref name="model"/>'s trainable parameters; <paramref name="modelName"/> identifies the base model.</summary>
    public static void Save(TunedModel model, string path, string modelName)
    {
        var o = model.Options;
        var metadata = new Dictionary<string, string>
        {
            ["petals_tuning_mode"] = TuningModes.Name(o.Mode),
            ["pre_seq_len"] = model.PrefixLength.ToString(CultureInfo.InvariantCulture),
            ["lora_rank"] = o.LoraRank.ToString(CultureInfo.InvariantCulture),
            ["lora_alpha"] = o.LoraAlpha.ToString("R", CultureInfo.InvariantCulture),
            ["model_name"] = modelName,
            ["model_type"] = model.Model.Config.ModelType,
            ["hidden_size"] = model.Model.Config.HiddenSize.ToString(CultureInfo.InvariantCulture),
            ["num_layers"] = model.Model.Config.NumLayers.ToString(CultureInfo.InvariantCulture),
            ["vocab_size"] = model.Model.Config.VocabSize.ToString(CultureInfo.InvariantCulture),
        };
        var dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null) Directory.CreateDirectory(dir);
        SafeTensorsWriter.Write(path, model.Trainable.Select(p => (p.Name, (Tensor)p.Parameter.detach())), metadata);
    }

    /// <summary>Reads the metadata of a saved file.</summary>
    public static IReadOnlyDictionary<string, string> ReadMetadata(string path)
    {
        using var file = new SafeTensorsFile(path);
        return file.Metadata;
    }

    /// <summary>
    /// Rebuilds the tuned model over <paramref name="model"/> from a saved file, checking that the file was trained for
    /// a model of the same shape (a different base model gives a clear error, not garbage).
    /// </summary>
    public static TunedModel Load(CausalLM model, string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"tuned parameters not found: {path}", path);
        using var file = new SafeTensorsFile(path);
        var meta = file.Metadata;
        string Need(string key) => meta.TryGetValue(key, out var v) ? v
            : throw new InvalidDataException($"{path}: no '{key}' in the metadata; not a file written by 'petals finetune'");
        var mode = TuningModes.Parse(Need("petals_tuning_mode"));
        var c = model.Config;
        foreach (var (key, value) in new[] { ("hidden_size", c.HiddenSize), ("num_layers", c.NumLayers), ("vocab_size", c.VocabSize) })
            if (Need(key) != value.ToString(CultureInfo.InvariantCulture))
                throw new InvalidDataException($"{path} was trained on '{Need("model_name")}' with {key} {Need(key)}; this model has {value}");
        var options = new TuningOptions(mode, int.Parse(Need("pre_seq_len"), CultureInfo.InvariantCulture),
            int.Parse(Need("lora_rank"), CultureInfo.InvariantCulture), double.Parse(Need("lora_alpha"), CultureInfo.InvariantCulture));
        Tensor Load(string name) => file.Contains(name) ? file.Load(name).clone()
            : throw new InvalidDataException($"{path}: tensor '{name}' is missing for mode {TuningModes.Name(mode)}");
        PromptTuner? tuner = mode.UsesPrompts()
            ? new PromptTuner(Load("prompt_embeddings"), mode == TuningMode.DeepPTune ? Load("intermediate_prompt_embeddings") : null)
            : null;
        var tuned = new TunedModel(model, options, tuner);
        using (var _ = no_grad())
            foreach (var (name, parameter) in tuned.Trainable)
            {
                var saved = Load(name);
                if (!saved.shape.SequenceEqual(parameter.shape))
                    throw new InvalidDataException($"{path}: '{name}' is [{string.Join(", ", saved.shape)}], expected [{string.Join(", ", parameter.shape)}]");
                parameter.copy_(saved);
            }
        return tuned;
    }
}
