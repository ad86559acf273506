using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace PetalsSharp.Models.Lora;

/// <summary>
/// The parts of a PEFT <c>adapter_config.json</c> a server needs to apply a LoRA adapter. Settings that would
/// change the math in ways this server does not implement (DoRA, per-module ranks, biases, transposed weights,
/// extra trained modules) are refused rather than ignored, so an adapter never runs silently wrong.
/// </summary>
/// <param name="R">Rank r of every A <c>[r, in]</c> and B <c>[out, r]</c>.</param>
/// <param name="Alpha">lora_alpha; the update is scaled by alpha / r (alpha / √r with rsLoRA).</param>
/// <param name="TargetModules">Module names matched by suffix (PEFT's list form); null when <see cref="TargetRegex"/> is used.</param>
/// <param name="TargetRegex">PEFT's string form: a regex the whole module name must match.</param>
/// <param name="LayersToTransform">Blocks the adapter touches; null = every block.</param>
/// <param name="UseRsLora">Rank-stabilised scaling alpha / √r.</param>
public sealed record LoraConfig(int R, double Alpha, IReadOnlyList<string>? TargetModules, string? TargetRegex,
    IReadOnlyList<int>? LayersToTransform, bool UseRsLora)
{
    public const string FileName = "adapter_config.json";

    /// <summary>The factor in front of <c>(x Aᵀ) Bᵀ</c>.</summary>
    public double Scale => UseRsLora ? Alpha / Math.Sqrt(R) : Alpha / R;

    /// <summary>Whether the adapter touches block <paramref name="layer"/>.</summary>
    public bool TransformsLayer(int layer) => LayersToTransform is null || LayersToTransform.Contains(layer);

    /// <summary>
    /// Whether a target entry selects <paramref name="fullName"/> (e.g. <c>model.layers.3.self_attn.q_proj</c>):
    /// a list entry matches the whole name or its dotted suffix, as PEFT does; a string is a full-match regex.
    /// </summary>
    public bool Targets(string fullName, string entry) =>
        fullName == entry || fullName.EndsWith("." + entry, StringComparison.Ordinal);

    public bool Targets(string fullName) => TargetRegex is not null
        ? Regex.IsMatch(fullName, $"^(?:{TargetRegex})$", RegexOptions.None, TimeSpan.FromSeconds(1))
        : TargetModules!.Any(t => Targets(fullName, t));

    /// <summary>Reads and checks <c>adapter_config.json</c> in <paramref name="dir"/>.</summary>
    /// <exception cref="LoraException">Missing file, bad JSON, or a setting that is invalid or unsupported.</exception>
    public static LoraConfig Load(string dir)
    {
        var path = Path.Combine(dir, FileName);
        if (!File.Exists(path)) throw new LoraException($"{path}: file not found (a PEFT adapter folder holds {FileName} and adapter_model.safetensors)");
        JsonObject o;
        try
        {
            o = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new LoraException($"{path}: not a JSON object");
        }
        catch (JsonException e)
        {
            throw new LoraException($"{path}: invalid JSON: {e.Message}");
        }
        return Parse(o, path);
    }

    internal static LoraConfig Parse(JsonObject o, string source)
    {
        string? Str(string key) => o[key] is JsonValue v && v.TryGetValue<string>(out var s) ? s : null;
        var peftType = Str("peft_type");
        if (peftType is not null && peftType != "LORA")
            throw new LoraException($"{source}: peft_type '{peftType}' is not supported (only LORA)");
        if (o["r"] is not JsonValue rv || !rv.TryGetValue<int>(out var r))
            throw new LoraException($"{source}: 'r' (the LoRA rank) must be an integer");
        if (r <= 0) throw new LoraException($"{source}: r = {r} must be positive");
        double alpha = r;
        if (o["lora_alpha"] is JsonValue av && !av.TryGetValue(out alpha))
            throw new LoraException($"{source}: lora_alpha must be a number");
        if (!double.IsFinite(alpha)) throw new LoraException($"{source}: lora_alpha must be finite");
        if (o["fan_in_fan_out"] is JsonValue f && f.TryGetValue<bool>(out var fanInFanOut) && fanInFanOut)
            throw new LoraException($"{source}: fan_in_fan_out = true is not supported (weights must be [out, in], as in Llama)");
        var bias = Str("bias") ?? "none";
        if (bias != "none") throw new LoraException($"{source}: bias = \"{bias}\" is not supported (only \"none\")");
        if (o["use_dora"] is JsonValue d && d.TryGetValue<bool>(out var dora) && dora)
            throw new LoraException($"{source}: use_dora = true is not supported (plain LoRA only)");
        foreach (var key in new[] { "rank_pattern", "alpha_pattern" })
            if (o[key] is JsonObject p && p.Count > 0)
                throw new LoraException($"{source}: {key} is not supported (one rank and alpha for every module)");
        if (o["modules_to_save"] is JsonArray save && save.Count > 0)
            throw new LoraException($"{source}: modules_to_save ({string.Join(", ", save)}) is not supported: a server applies only LoRA updates");
        bool rs = o["use_rslora"] is JsonValue rsv && rsv.TryGetValue<bool>(out var useRs) && useRs;

        IReadOnlyList<string>? targets = null;
        string? regex = null;
        switch (o["target_modules"])
        {
            case JsonArray a:
                targets = a.Select(n => n is JsonValue v && v.TryGetValue<string>(out var s) && s.Length > 0 ? s
                    : throw new LoraException($"{source}: target_modules must be a list of module names")).ToList();
                if (targets.Count == 0) throw new LoraException($"{source}: target_modules is empty");
                break;
            case JsonValue v when v.TryGetValue<string>(out var s) && s.Length > 0:
                try { _ = new Regex(s); }
                catch (ArgumentException e) { throw new LoraException($"{source}: target_modules regex '{s}' is invalid: {e.Message}"); }
                regex = s;
                break;
            default:
                throw new LoraException($"{source}: target_modules must be a list of module names (or a regex string)");
        }

        IReadOnlyList<int>? layers = o["layers_to_transform"] switch
        {
            null => null,
            JsonValue v when v.TryGetValue<int>(out var one) => [one],
            JsonArray a => a.Select(n => n is JsonValue v && v.TryGetValue<int>(out var i) ? i
                : throw new LoraException($"{source}: layers_to_transform must be an integer or a list of integers")).ToList(),
            _ => throw new LoraException($"{source}: layers_to_transform must be an integer or a list of integers"),
        };
        return new LoraConfig(r, alpha, targets, regex, layers, rs);
    }
}

/// <summary>A LoRA adapter cannot be used: a missing file, an invalid setting, or tensors that do not fit the model.</summary>
public sealed class LoraException(string message) : Exception(message);
