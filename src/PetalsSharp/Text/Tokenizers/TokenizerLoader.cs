using System.Text.Json;

namespace PetalsSharp.Text.Tokenizers;

/// <summary>Loads the tokenizer stored in a Hugging Face model folder.</summary>
public static class TokenizerLoader
{
    /// <summary>File name of a Hugging Face <c>tokenizers</c> file.</summary>
    public const string HfJsonFileName = "tokenizer.json";

    /// <summary>File name of a SentencePiece model.</summary>
    public const string SentencePieceFileName = "tokenizer.model";

    /// <summary>File name of the <c>transformers</c> tokenizer settings.</summary>
    public const string ConfigFileName = "tokenizer_config.json";

    private const string SpecialTokensMapFileName = "special_tokens_map.json";

    /// <summary>
    /// Loads the tokenizer in <paramref name="modelDir"/>, applying <c>add_bos_token</c>, <c>bos_token</c> and
    /// <c>eos_token</c> from <c>tokenizer_config.json</c> (or <c>special_tokens_map.json</c>) when present.
    /// </summary>
    /// <param name="modelDir">The model folder.</param>
    /// <param name="format">Which file to read; <see cref="TokenizerFormat.Auto"/> prefers <c>tokenizer.json</c>.</param>
    /// <returns>The tokenizer.</returns>
    /// <exception cref="FileNotFoundException">The folder has no tokenizer file of the requested format.</exception>
    /// <exception cref="InvalidDataException">A tokenizer file is malformed.</exception>
    /// <exception cref="NotSupportedException">The tokenizer file uses a component that is not implemented.</exception>
    public static ITextTokenizer Load(string modelDir, TokenizerFormat format = TokenizerFormat.Auto)
    {
        ArgumentNullException.ThrowIfNull(modelDir);
        string json = Path.Combine(modelDir, HfJsonFileName);
        string model = Path.Combine(modelDir, SentencePieceFileName);
        bool useJson = format switch
        {
            TokenizerFormat.HfJson => true,
            TokenizerFormat.SentencePiece => false,
            _ => File.Exists(json) || !File.Exists(model),
        };
        string chosen = useJson ? json : model;
        if (!File.Exists(chosen))
        {
            string wanted = format switch
            {
                TokenizerFormat.HfJson => HfJsonFileName,
                TokenizerFormat.SentencePiece => SentencePieceFileName,
                _ => $"{HfJsonFileName} or {SentencePieceFileName}",
            };
            throw new FileNotFoundException($"No tokenizer found: '{modelDir}' has no {wanted}.", chosen);
        }

        var settings = ReadSettings(modelDir);
        return useJson ? HfJsonTokenizer.Load(chosen, settings) : SentencePieceTokenizer.Load(chosen, settings);
    }

    /// <summary>
    /// Like <see cref="Load"/>, but a folder without any tokenizer file gives null (random-weight fixtures have
    /// none). A tokenizer file that exists but is broken still throws.
    /// </summary>
    public static ITextTokenizer? TryLoad(string modelDir) =>
        File.Exists(Path.Combine(modelDir, HfJsonFileName)) || File.Exists(Path.Combine(modelDir, SentencePieceFileName))
            ? Load(modelDir)
            : null;

    /// <summary>Reads the tokenizer settings of <paramref name="modelDir"/>; missing files give empty settings.</summary>
    /// <param name="modelDir">The model folder.</param>
    /// <returns>The settings found.</returns>
    /// <exception cref="InvalidDataException">A settings file is not valid JSON.</exception>
    public static TokenizerSettings ReadSettings(string modelDir)
    {
        var config = ReadObject(Path.Combine(modelDir, ConfigFileName));
        var map = ReadObject(Path.Combine(modelDir, SpecialTokensMapFileName));
        bool? addBos = HfJson.Prop(config, "add_bos_token").ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => null,
        };
        return new TokenizerSettings(
            addBos,
            TokenContent(config, "bos_token") ?? TokenContent(map, "bos_token"),
            TokenContent(config, "eos_token") ?? TokenContent(map, "eos_token"));
    }

    // transformers writes special tokens either as plain strings or as AddedToken objects.
    private static string? TokenContent(JsonElement owner, string name) =>
        HfJson.Prop(owner, name) switch
        {
            { ValueKind: JsonValueKind.String } s => s.GetString(),
            { ValueKind: JsonValueKind.Object } o => HfJson.String(o, "content"),
            _ => null,
        };

    private static JsonElement ReadObject(string path)
    {
        if (!File.Exists(path))
        {
            return default;
        }

        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            return doc.RootElement.Clone();
        }
        catch (JsonException ex)
        {
            throw new InvalidDataException($"'{path}' is not valid JSON: {ex.Message}", ex);
        }
    }
}
