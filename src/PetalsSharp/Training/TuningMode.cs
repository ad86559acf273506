namespace PetalsSharp.Training;

/// <summary>What a fine-tuning run trains; the model's blocks stay frozen on their servers in every mode.</summary>
public enum TuningMode
{
    /// <summary>Petals' <c>ptune</c>: trainable virtual-token embeddings <c>[P, H]</c> prepended to the input embeddings.</summary>
    PTune,

    /// <summary>
    /// Petals' <c>deep_ptune</c>: the <see cref="PTune"/> prefix plus trainable prompts <c>[L, P, H]</c> added to the
    /// first P positions of every block's input (sent to the servers with each call).
    /// </summary>
    DeepPTune,

    /// <summary>LoRA on the client-side LM head (<c>lm_head.lora_A/B</c>, PEFT conventions).</summary>
    Adapter,

    /// <summary>A trainable copy of the whole LM head <c>[V, H]</c>.</summary>
    Head,
}

/// <summary>Names of the modes as the CLI and saved files spell them.</summary>
public static class TuningModes
{
    public static string Name(TuningMode mode) => mode switch
    {
        TuningMode.PTune => "ptune",
        TuningMode.DeepPTune => "deep_ptune",
        TuningMode.Adapter => "adapter",
        TuningMode.Head => "head",
        _ => throw new ArgumentOutOfRangeException(nameof(mode)),
    };

    public static TuningMode Parse(string name) => name.ToLowerInvariant() switch
    {
        "ptune" => TuningMode.PTune,
        "deep_ptune" or "deep-ptune" => TuningMode.DeepPTune,
        "adapter" or "lora" => TuningMode.Adapter,
        "head" => TuningMode.Head,
        _ => throw new ArgumentException($"unknown tuning mode '{name}' (ptune, deep_ptune, adapter or head)"),
    };

    /// <summary>Whether the mode prepends virtual tokens.</summary>
    public static bool UsesPrompts(this TuningMode mode) => mode is TuningMode.PTune or TuningMode.DeepPTune;
}
