using System.Text.Json;
using PetalsSharp.Text.Tokenizers;

namespace PetalsSharp.Training;

/// <summary>One training sequence: token ids, of which the first <paramref name="PromptLength"/> are not scored.</summary>
public sealed record TrainingExample(IReadOnlyList<int> Ids, int PromptLength = 0);

/// <summary>
/// Reads fine-tuning data: JSON Lines, each line <c>{"text": ...}</c> (every token scored) or
/// <c>{"prompt": ..., "completion": ...}</c> (only the completion's tokens scored). Blank lines are skipped.
/// </summary>
public static class FinetuneData
{
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">A line is not such an object, or the file holds no example; the message names file and line.</exception>
    public static IReadOnlyList<TrainingExample> LoadJsonl(string path, ITextTokenizer tokenizer, int maxTokens = 1024)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"data file not found: {path}", path);
        var examples = new List<TrainingExample>();
        int lineNo = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            try { examples.Add(Parse(line, tokenizer, maxTokens)); }
            catch (Exception e) when (e is JsonException or InvalidDataException)
            {
                throw new InvalidDataException($"{path}:{lineNo}: {e.Message}", e);
            }
        }
        if (examples.Count == 0) throw new InvalidDataException($"{path}: no examples (one JSON object per line)");
        return examples;
    }

    /// <summary>One JSONL line to an example.</summary>
    public static TrainingExample Parse(string line, ITextTokenizer tokenizer, int maxTokens = 1024)
    {
        using var doc = JsonDocument.Parse(line);
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw new InvalidDataException("expected a JSON object");
        string? Get(string name) => root.TryGetProperty(name, out var v)
            ? v.ValueKind == JsonValueKind.String ? v.GetString() : throw new InvalidDataException($"\"{name}\" must be a string")
            : null;
        var text = Get("text");
        var prompt = Get("prompt");
        var completion = Get("completion");
        TrainingExample example;
        if (text is not null && prompt is null && completion is null)
            example = new TrainingExample(tokenizer.Encode(text).ToArray());
        else if (text is null && prompt is not null && completion is not null)
        {
            var p = tokenizer.Encode(prompt);
            var c = tokenizer.Encode(completion, addBos: false);
            if (c.Count == 0) throw new InvalidDataException("\"completion\" has no tokens");
            example = new TrainingExample(p.Concat(c).ToArray(), p.Count);
        }
        else throw new InvalidDataException("expected {\"text\": ...} or {\"prompt\": ..., \"completion\": ...}");
        if (example.Ids.Count < 2) throw new InvalidDataException("a sequence needs at least 2 tokens to score one");
        if (example.Ids.Count > maxTokens) throw new InvalidDataException($"{example.Ids.Count} tokens; the limit is {maxTokens}");
        return example;
    }
}
