using System.Text.Json;
using System.Text.Json.Nodes;

namespace PetalsSharp.Models;

/// <summary>
/// The family-independent part of a Hugging Face <c>config.json</c>. Each family derives a record that adds
/// its own keys; everything that routes, serves or generates only needs what is here.
/// </summary>
public abstract record ModelConfig
{
    // Not `required`: a family's parser sets these through ReadCommon after its own keys, and Validate refuses
    // any size left at 0.

    /// <summary>HF <c>model_type</c>, e.g. "llama".</summary>
    public string ModelType { get; init; } = "";
    public int VocabSize { get; init; }
    public int HiddenSize { get; init; }
    public int NumLayers { get; init; }
    public int NumHeads { get; init; }
    public int NumKvHeads { get; init; }
    public int HeadDim { get; init; }
    public int MaxPositionEmbeddings { get; init; } = 2048;
    public bool TieWordEmbeddings { get; init; }
    public int? BosTokenId { get; init; }
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];
    public int? PadTokenId { get; init; }
    /// <summary>HF <c>torch_dtype</c> as written in the config (compute dtype is chosen at load).</summary>
    public string? TorchDtype { get; init; }

    /// <summary>
    /// The dtype the checkpoint was published in (<see cref="TorchDtype"/>): the default for holding its weights,
    /// since real models ship bf16 and serving them in f32 doubles the memory. f32 when absent or unknown.
    /// </summary>
    public TorchSharp.torch.ScalarType CheckpointDtype => TorchDtype?.ToLowerInvariant() switch
    {
        "bfloat16" => TorchSharp.torch.ScalarType.BFloat16,
        "float16" => TorchSharp.torch.ScalarType.Float16,
        _ => TorchSharp.torch.ScalarType.Float32,
    };

    /// <summary>The family implementation that builds blocks for this config.</summary>
    public abstract IModelFamily Family { get; }

    /// <summary>Keys a query may see (itself included) when attention slides; null = all. A cache keeps only these.</summary>
    public virtual int? AttentionWindow => null;

    /// <summary>HF <c>architectures</c> entry, e.g. "LlamaForCausalLM".</summary>
    protected abstract string Architecture { get; }

    /// <summary>The family's own <c>config.json</c> keys, in the order HF writes them.</summary>
    protected abstract JsonObject OwnHfKeys();

    /// <summary>The config as HF <c>config.json</c> would write it (used by <c>petals create-model</c>).</summary>
    public JsonObject ToHfJson()
    {
        var json = new JsonObject
        {
            ["architectures"] = new JsonArray(Architecture), ["model_type"] = ModelType,
            ["vocab_size"] = VocabSize, ["hidden_size"] = HiddenSize,
        };
        foreach (var (key, value) in OwnHfKeys().ToList()) json[key] = value?.DeepClone();
        json["tie_word_embeddings"] = TieWordEmbeddings;
        json["bos_token_id"] = BosTokenId;
        json["eos_token_id"] = EosTokenIds.Count switch
        {
            0 => null,
            1 => EosTokenIds[0],
            _ => new JsonArray([.. EosTokenIds.Select(e => (JsonNode?)e)]),
        };
        json["pad_token_id"] = PadTokenId;
        json["torch_dtype"] = TorchDtype ?? "float32";
        return json;
    }

    /// <summary>
    /// This config with the keys every family reads alike, absent ones at the family's <paramref name="d"/>efaults;
    /// GPT-style families also take <c>n_embed</c>, <c>n_head</c> and <c>n_layer</c>, which win over the long names
    /// as they do in HF (it maps them onto the long names after <c>__init__</c>).
    /// </summary>
    internal static T ReadCommon<T>(T config, JsonConfigReader r, CommonDefaults d) where T : ModelConfig
    {
        int? Short(string key) => d.ShortNames ? r.IntOrNull(key) : null;
        int hidden = Short("n_embed") ?? r.Int("hidden_size", d.Hidden), heads = Short("n_head") ?? r.Int("num_attention_heads", d.Heads);
        if (heads <= 0) throw new ConfigException($"{r.Source}: {(d.ShortNames ? "n_head" : "num_attention_heads")} must be positive");
        return (T)((ModelConfig)config with
        {
            ModelType = d.ModelType,
            VocabSize = r.Int("vocab_size", d.Vocab),
            HiddenSize = hidden,
            NumLayers = Short("n_layer") ?? r.Int("num_hidden_layers", d.Layers),
            NumHeads = heads,
            NumKvHeads = heads,
            HeadDim = hidden / heads,
            MaxPositionEmbeddings = r.Int("max_position_embeddings", d.MaxPositions),
            TieWordEmbeddings = r.Bool("tie_word_embeddings", d.Tie),
            BosTokenId = r.IntOrNull("bos_token_id") ?? d.Bos,
            EosTokenIds = r.Has("eos_token_id") ? r.IntList("eos_token_id") : d.Eos is { } eos ? [eos] : [],
            PadTokenId = r.IntOrNull("pad_token_id"),
            TorchDtype = r.String("torch_dtype"),
        });
    }

    /// <summary>
    /// This config with the sizes of <paramref name="s"/> and the token ids of a random model (<c>petals create-model</c>).
    /// </summary>
    internal static T FromShape<T>(T config, string modelType, ModelShape s) where T : ModelConfig => (T)((ModelConfig)config with
    {
        ModelType = modelType,
        VocabSize = s.VocabSize,
        HiddenSize = s.HiddenSize,
        NumLayers = s.NumLayers,
        NumHeads = s.NumHeads,
        NumKvHeads = s.NumKvHeads ?? s.NumHeads,
        HeadDim = s.HiddenSize / s.NumHeads,
        MaxPositionEmbeddings = s.MaxPositions,
        TieWordEmbeddings = s.TieEmbeddings,
        BosTokenId = s.SpecialTokenId,
        EosTokenIds = [s.SpecialTokenId],
    });

    /// <summary>Query heads per KV head (1 for plain multi-head attention).</summary>
    public int KvGroups => NumHeads / NumKvHeads;

    /// <summary>Checks the invariants that every family relies on; throws <see cref="ConfigException"/>.</summary>
    public virtual void Validate(string source)
    {
        void Require(bool ok, string what)
        {
            if (!ok) throw new ConfigException($"{source}: {what}");
        }
        Require(VocabSize > 0, $"vocab_size must be positive (got {VocabSize})");
        Require(HiddenSize > 0, $"hidden_size must be positive (got {HiddenSize})");
        Require(NumLayers > 0, $"num_hidden_layers must be positive (got {NumLayers})");
        Require(NumHeads > 0, $"num_attention_heads must be positive (got {NumHeads})");
        Require(NumKvHeads > 0 && NumHeads % NumKvHeads == 0,
            $"num_attention_heads ({NumHeads}) must be a multiple of num_key_value_heads ({NumKvHeads})");
        Require(HeadDim > 0, $"head_dim must be positive (got {HeadDim})");
    }
}

/// <summary>A family's transformers 4.45 defaults for the keys <see cref="ModelConfig.ReadCommon"/> reads.</summary>
internal sealed record CommonDefaults(string ModelType, int Vocab, int Hidden, int Heads, int Layers, int MaxPositions, bool Tie,
    int? Bos, int? Eos, bool ShortNames = false);

/// <summary>A config.json that cannot be used: malformed, inconsistent or of an unknown family.</summary>
public sealed class ConfigException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>Reads <c>config.json</c> and dispatches on <c>model_type</c>.</summary>
public static class ModelConfigLoader
{
    /// <summary>Loads <c>DIR/config.json</c>.</summary>
    public static ModelConfig Load(string modelDir)
    {
        var path = Path.Combine(modelDir, "config.json");
        if (!Directory.Exists(modelDir)) throw new ConfigException($"model directory not found: {modelDir}");
        if (!File.Exists(path)) throw new ConfigException($"{path}: not found (a Hugging Face model folder needs config.json)");
        return Parse(File.ReadAllText(path), path);
    }

    /// <summary>Parses config JSON text; <paramref name="source"/> names it in errors.</summary>
    public static ModelConfig Parse(string json, string source = "config.json")
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(json); }
        catch (JsonException e) { throw new ConfigException($"{source}: malformed JSON: {e.Message}", e); }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new ConfigException($"{source}: expected a JSON object");
            var type = new JsonConfigReader(root, source).String("model_type")
                       ?? throw new ConfigException($"{source}: missing model_type");
            var family = ModelFamilies.Find(type)
                         ?? throw new ConfigException($"{source}: unsupported model_type '{type}' (supported: {string.Join(", ", ModelFamilies.Names)})");
            try
            {
                var config = family.ParseConfig(new JsonConfigReader(root, source));
                config.Validate(source);
                return config;
            }
            catch (InvalidOperationException e) { throw new ConfigException($"{source}: {e.Message}", e); }
        }
    }
}

/// <summary>Typed access to config keys with HF defaults for absent or null keys, and errors that name the key.</summary>
public readonly struct JsonConfigReader(JsonElement root, string source)
{
    public string Source => source;
    public JsonElement Root => root;

    JsonElement? Get(string key) =>
        root.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    public bool Has(string key) => Get(key) is not null;

    public int Int(string key, int fallback) => Get(key) is { } v ? ReadInt(key, v) : fallback;
    public int? IntOrNull(string key) => Get(key) is { } v ? ReadInt(key, v) : null;
    public double Double(string key, double fallback) => Get(key) is { } v ? ReadDouble(key, v) : fallback;
    public bool Bool(string key, bool fallback) => Get(key) is { } v
        ? v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new ConfigException($"{source}: '{key}' must be true or false"),
        }
        : fallback;
    public string? String(string key) => Get(key) is { } v
        ? v.ValueKind == JsonValueKind.String ? v.GetString() : throw new ConfigException($"{source}: '{key}' must be a string")
        : null;
    public JsonElement? Object(string key) => Get(key) is { } v
        ? v.ValueKind == JsonValueKind.Object ? v : throw new ConfigException($"{source}: '{key}' must be an object")
        : null;

    /// <summary>An id or a list of ids (HF allows both for <c>eos_token_id</c>).</summary>
    public IReadOnlyList<int> IntList(string key)
    {
        if (Get(key) is not { } v) return [];
        if (v.ValueKind == JsonValueKind.Array)
        {
            var list = new List<int>();
            foreach (var e in v.EnumerateArray()) list.Add(ReadInt(key, e));
            return list;
        }
        return [ReadInt(key, v)];
    }

    int ReadInt(string key, JsonElement v)
    {
        if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out var i)) return i;
        throw new ConfigException($"{source}: '{key}' must be an integer (got {v.GetRawText()})");
    }

    double ReadDouble(string key, JsonElement v)
    {
        if (v.ValueKind == JsonValueKind.Number) return v.GetDouble();
        throw new ConfigException($"{source}: '{key}' must be a number (got {v.GetRawText()})");
    }
}
