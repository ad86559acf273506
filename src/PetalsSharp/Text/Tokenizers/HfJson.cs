using System.Text.Json;
using System.Text.RegularExpressions;

namespace PetalsSharp.Text.Tokenizers;

/// <summary>Small helpers for reading <c>tokenizer.json</c> components with error messages that name the file.</summary>
internal static class HfJson
{
    public static NotSupportedException Unsupported(string file, string component, string? type, string supported) =>
        new($"'{file}': {component} '{type ?? "(no type)"}' is not supported. Supported: {supported}.");

    public static InvalidDataException Invalid(string file, string what) =>
        new($"'{file}' is not a valid tokenizer.json: {what}.");

    public static bool IsNull(JsonElement e) => e.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined;

    public static JsonElement Prop(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) ? v : default;

    public static string? Type(JsonElement e) =>
        Prop(e, "type") is { ValueKind: JsonValueKind.String } t ? t.GetString() : null;

    public static string? String(JsonElement e, string name) =>
        Prop(e, name) is { ValueKind: JsonValueKind.String } v ? v.GetString() : null;

    public static bool Bool(JsonElement e, string name, bool fallback) =>
        Prop(e, name).ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => fallback,
        };

    public static int Int(JsonElement e, string name, int fallback) =>
        Prop(e, name) is { ValueKind: JsonValueKind.Number } v ? v.GetInt32() : fallback;

    public static JsonElement.ArrayEnumerator Array(JsonElement e, string name, string file, string component)
    {
        var v = Prop(e, name);
        if (v.ValueKind != JsonValueKind.Array)
        {
            throw Invalid(file, $"{component} has no '{name}' array");
        }

        return v.EnumerateArray();
    }

    /// <summary>
    /// Reads a <c>{"String": ...}</c> or <c>{"Regex": ...}</c> pattern. HF compiles regexes with Oniguruma;
    /// the patterns tokenizers ship (GPT-2, Llama 3) mean the same in .NET.
    /// </summary>
    public static Regex Pattern(JsonElement owner, string file, string component)
    {
        var p = Prop(owner, "pattern");
        if (String(p, "String") is string literal)
        {
            return new Regex(Regex.Escape(literal), RegexOptions.CultureInvariant);
        }

        if (String(p, "Regex") is string regex)
        {
            try
            {
                return new Regex(regex, RegexOptions.CultureInvariant);
            }
            catch (ArgumentException) when (FlattenNestedClasses(regex) is var flat && flat != regex && TryRegex(flat) is Regex r)
            {
                return r;
            }
            catch (ArgumentException ex)
            {
                throw new NotSupportedException($"'{file}': {component} regex '{regex}' is not supported by .NET: {ex.Message}", ex);
            }
        }

        throw Invalid(file, $"{component} has no 'pattern' with 'String' or 'Regex'");
    }

    /// <summary>
    /// Rewrites Oniguruma's nested character classes, which mean a union (BLOOM's <c>[^(\s|[.,!?…])]</c>), into one
    /// flat .NET class. Returns the input unchanged when a nested class is negated, which has no flat form.
    /// </summary>
    internal static string FlattenNestedClasses(string pattern)
    {
        var sb = new System.Text.StringBuilder(pattern.Length);
        int depth = 0;
        for (int i = 0; i < pattern.Length; i++)
        {
            char c = pattern[i];
            if (c == '\\' && i + 1 < pattern.Length)
            {
                sb.Append(c).Append(pattern[++i]);
            }
            else if (c == '[' && depth == 0)
            {
                depth = 1;
                sb.Append(c);
                if (i + 1 < pattern.Length && pattern[i + 1] == '^')
                {
                    sb.Append(pattern[++i]);
                }
            }
            else if (c == '[')
            {
                if (i + 1 < pattern.Length && pattern[i + 1] == '^')
                {
                    return pattern;
                }

                depth++;
            }
            else if (c == ']' && depth > 0)
            {
                depth--;
                if (depth == 0)
                {
                    sb.Append(c);
                }
            }
            else
            {
                sb.Append(c);
            }
        }

        return sb.ToString();
    }

    private static Regex? TryRegex(string pattern)
    {
        try
        {
            return new Regex(pattern, RegexOptions.CultureInvariant);
        }
        catch (ArgumentException)
        {
            return null;
        }
    }
}
