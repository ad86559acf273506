using System.Text.Json;
using PetalsSharp.Models.Weights;
using Xunit;
using static PetalsSharp.Tests.Weights.SafeTensorsTestSupport;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Weights;

public class SafeTensorsWeightStoreTests
{
    /// <summary>Splits a fixture into shards the way transformers does: by block, with an index.</summary>
    internal static Dictionary<string, string> WriteSharded(string fixture, string dir, int shards)
    {
        using var source = new SafeTensorsFile(FixtureFile(fixture));
        var names = source.Entries.Keys.Order(StringComparer.Ordinal).ToArray();
        var map = new Dictionary<string, string>();
        var perShard = (names.Length + shards - 1) / shards;
        for (int s = 0; s < shards; s++)
        {
            string shardName = $"model-{s + 1:D5}-of-{shards:D5}.safetensors";
            var part = names.Skip(s * perShard).Take(perShard).ToArray();
            using var scope = NewDisposeScope();
            SafeTensorsWriter.Write(Path.Combine(dir, shardName), part.Select(n => (n, source.Load(n))));
            foreach (var n in part) map[n] = shardName;
        }
        var index = new { metadata = new { total_size = new FileInfo(FixtureFile(fixture)).Length }, weight_map = map };
        File.WriteAllText(Path.Combine(dir, WeightStore.IndexFileName), JsonSerializer.Serialize(index));
        return map;
    }

    [Fact]
    public void SingleFileStoreLoadsEveryFixtureTensor()
    {
        using var store = WeightStore.Open(FixtureDir("llama-gqa"));
        Assert.Null(store.IndexPath);
        Assert.Equal(ReferenceTensorNames("llama-gqa"), store.Names.Order(StringComparer.Ordinal));
        Assert.True(store.Contains("model.layers.2.mlp.up_proj.weight"));
        Assert.False(store.Contains("model.layers.3.mlp.up_proj.weight"));
        Assert.Equal(new long[] { 176, 64 }, store.Shape("model.layers.2.mlp.up_proj.weight"));
        using var t = store.Load("model.layers.2.mlp.up_proj.weight", ScalarType.BFloat16, [176, 64]);
        Assert.Equal(ScalarType.BFloat16, t.dtype);
        Assert.Equal(1, store.LoadedTensorCount);
        Assert.Single(store.OpenedFiles);
    }

    [Theory]
    [InlineData("llama-gqa", 3)]
    [InlineData("mixtral", 2)]
    public void ShardedStoreOpensOnlyTheShardsItNeeds(string fixture, int shards)
    {
        using var dir = new TempDir();
        var map = WriteSharded(fixture, dir.Path, shards);

        using var store = WeightStore.Open(dir.Path);
        Assert.Equal(dir.File(WeightStore.IndexFileName), store.IndexPath);
        // Names and Contains come from the index alone.
        Assert.Equal(map.Keys.Order(StringComparer.Ordinal), store.Names.Order(StringComparer.Ordinal));
        Assert.True(store.Contains(map.Keys.First()));
        Assert.Empty(store.OpenedFiles);

        string last = map.Keys.Order(StringComparer.Ordinal).Last();
        using (var t = store.Load(last)) Assert.True(t.numel() > 0);
        Assert.Equal([dir.File(map[last])], store.OpenedFiles);
        Assert.Equal(1, store.LoadedTensorCount);

        using var reference = WeightStore.Open(FixtureDir(fixture));
        int loaded = 1;
        foreach (var name in map.Keys)
        {
            using var expected = reference.Load(name);
            using var actual = store.Load(name, ScalarType.Float32, expected.shape);
            AssertBitIdentical(expected, actual, name);
            Assert.Equal(++loaded, store.LoadedTensorCount);
        }
        Assert.Equal(shards, store.OpenedFiles.Count);
    }

    [Fact]
    public void ShapeOpensTheShardButDoesNotCountAsALoad()
    {
        using var dir = new TempDir();
        var map = WriteSharded("bloom", dir.Path, 2);
        using var store = WeightStore.Open(dir.Path);
        string first = map.Keys.Order(StringComparer.Ordinal).First();
        using var reference = new SafeTensorsFile(FixtureFile("bloom"));
        Assert.Equal(reference.Entries[first].Shape, store.Shape(first));
        Assert.Equal([dir.File(map[first])], store.OpenedFiles);
        Assert.Equal(0, store.LoadedTensorCount);
    }
}
