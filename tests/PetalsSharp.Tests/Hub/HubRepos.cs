using System.Text.Json;
using PetalsSharp.Models.Weights;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Hub;

/// <summary>Model repos for the fake hub, made from the llama-gqa fixture (3 blocks).</summary>
public static class HubRepos
{
    public static string FixtureDir => Path.Combine(AppContext.BaseDirectory, "TestData", "llama-gqa");

    /// <summary>The fixture as one model.safetensors, plus a tokenizer_config.json with a chat template.</summary>
    public static string SingleFile(string dir)
    {
        Directory.CreateDirectory(dir);
        foreach (var f in new[] { "config.json", "generation_config.json", "model.safetensors" })
            File.Copy(Path.Combine(FixtureDir, f), Path.Combine(dir, f));
        File.Copy(Path.Combine(AppContext.BaseDirectory, "TestData", "chat-templates", "zephyr.json"), Path.Combine(dir, "tokenizer_config.json"));
        return dir;
    }

    /// <summary>
    /// The fixture sharded as a big model is: shard 1 the embeddings, shards 2..4 one block each, shard 5 the
    /// final norm and LM head, with model.safetensors.index.json. Returns shard file name by content.
    /// </summary>
    public static (string Embed, string[] Blocks, string Head) Sharded(string dir)
    {
        Directory.CreateDirectory(dir);
        foreach (var f in new[] { "config.json", "generation_config.json" })
            File.Copy(Path.Combine(FixtureDir, f), Path.Combine(dir, f));
        File.Copy(Path.Combine(AppContext.BaseDirectory, "TestData", "chat-templates", "zephyr.json"), Path.Combine(dir, "tokenizer_config.json"));
        using var source = new SafeTensorsFile(Path.Combine(FixtureDir, "model.safetensors"));
        static string Shard(int i) => $"model-{i:D5}-of-00005.safetensors";
        string ShardOf(string name) =>
            name.StartsWith("model.embed_tokens.", StringComparison.Ordinal) ? Shard(1)
            : name.StartsWith("model.layers.", StringComparison.Ordinal) ? Shard(2 + int.Parse(name.Split('.')[2]))
            : Shard(5);
        var map = source.Entries.Keys.Order(StringComparer.Ordinal).ToDictionary(n => n, ShardOf);
        foreach (var group in map.GroupBy(kv => kv.Value))
        {
            using var scope = NewDisposeScope();
            SafeTensorsWriter.Write(Path.Combine(dir, group.Key), group.Select(kv => (kv.Key, source.Load(kv.Key))));
        }
        File.WriteAllText(Path.Combine(dir, WeightStore.IndexFileName),
            JsonSerializer.Serialize(new { metadata = new { total_size = 0 }, weight_map = map }));
        return (Shard(1), [Shard(2), Shard(3), Shard(4)], Shard(5));
    }
}
