using System.Text.Json;
using PetalsSharp.Models;
using PetalsSharp.Models.Weights;

namespace PetalsSharp.Hub;

/// <summary>Which weights a process needs: a server its blocks, a client the embeddings, norm and head.</summary>
public sealed record WeightSelection
{
    enum Kind { All, Blocks, Ends, None }

    readonly Kind _kind;
    readonly int _start, _end;

    WeightSelection(Kind kind, int start = 0, int end = 0) => (_kind, _start, _end) = (kind, start, end);

    /// <summary>Every weight file (a local run, or a server that picks its blocks after joining the swarm).</summary>
    public static WeightSelection All { get; } = new(Kind.All);

    /// <summary>The client's part: embeddings (and their norm), final norm and LM head.</summary>
    public static WeightSelection ClientEnds { get; } = new(Kind.Ends);

    /// <summary>Config and tokenizer only.</summary>
    public static WeightSelection None { get; } = new(Kind.None);

    /// <summary>The tensors of blocks <c>[start, end)</c>.</summary>
    public static WeightSelection Blocks(int start, int end) =>
        start >= 0 && end > start ? new(Kind.Blocks, start, end) : throw new ArgumentOutOfRangeException(nameof(end), $"bad block span {start}:{end}");

    public override string ToString() => _kind switch
    {
        Kind.Blocks => $"blocks {_start}:{_end}",
        Kind.Ends => "client ends",
        _ => _kind.ToString().ToLowerInvariant(),
    };

    /// <summary>
    /// The weight files of <paramref name="snapshotDir"/> this selection needs, given its config.json and, for a
    /// sharded checkpoint, its index (both must already be there); a single-file checkpoint is always needed whole.
    /// </summary>
    /// <exception cref="HubException">The span is outside the model, or the index lacks a tensor the family expects.</exception>
    public IReadOnlyList<string> FilesIn(string snapshotDir)
    {
        if (_kind == Kind.None) return [];
        string index = Path.Combine(snapshotDir, WeightStore.IndexFileName);
        if (!File.Exists(index)) return [WeightStore.SingleFileName];
        var map = ReadWeightMap(index);
        if (_kind == Kind.All) return map.Values.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();
        var config = ModelConfigLoader.Load(snapshotDir);
        if (_kind == Kind.Blocks && _end > config.NumLayers)
            throw new HubException($"blocks {_start}:{_end} are outside the model's {config.NumLayers} blocks");
        var specs = _kind == Kind.Ends
            ? config.Family.EndTensors(config)
            : Enumerable.Range(_start, _end - _start).SelectMany(i => config.Family.BlockTensors(config, i)).ToList();
        var files = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var spec in specs)
        {
            if (!map.TryGetValue(spec.Name, out var file))
                throw new HubException($"{index} has no tensor '{spec.Name}', which a {config.ModelType} model needs");
            files.Add(file);
        }
        return files.ToList();
    }

    static Dictionary<string, string> ReadWeightMap(string index)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(index));
            if (!doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new HubException($"{index} has no \"weight_map\" object");
            var result = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var p in map.EnumerateObject())
            {
                string file = p.Value.ValueKind == JsonValueKind.String ? p.Value.GetString()! : "";
                // The index comes from whoever published the repo: a shard name must stay inside the snapshot.
                if (file.Length == 0 || file.Contains("..", StringComparison.Ordinal) || Path.IsPathRooted(file) || file.Contains('\\'))
                    throw new HubException($"{index}: weight_map entry for '{p.Name}' is not a plain file name");
                result[p.Name] = file;
            }
            return result;
        }
        catch (JsonException e)
        {
            throw new HubException($"{index} is not valid JSON: {e.Message}", e);
        }
    }
}
