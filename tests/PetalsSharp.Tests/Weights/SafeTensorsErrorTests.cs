using PetalsSharp.Models.Weights;
using Xunit;
using static PetalsSharp.Tests.Weights.SafeTensorsTestSupport;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Weights;

public class SafeTensorsErrorTests
{
    private const string Up3 = "model.layers.3.mlp.up_proj.weight";

    private static void AssertMentions(CheckpointException ex, params string[] parts)
    {
        foreach (var p in parts) Assert.Contains(p, ex.Message);
    }

    [Fact]
    public void MissingTensorNamesTensorAndFile()
    {
        using var store = WeightStore.Open(FixtureDir("llama-gqa"));
        var ex = Assert.Throws<CheckpointException>(() => store.Load(Up3));
        AssertMentions(ex, $"'{Up3}'", FixtureFile("llama-gqa"), "not found");
        Assert.Equal(Up3, ex.TensorName);
        Assert.Throws<CheckpointException>(() => store.Shape(Up3));
        Assert.Equal(0, store.LoadedTensorCount);
    }

    [Fact]
    public void MissingTensorInShardedStoreNamesIndexAndShard()
    {
        using var dir = new TempDir();
        var map = SafeTensorsWeightStoreTests.WriteSharded("llama-gqa", dir.Path, 2);
        string index = dir.File(WeightStore.IndexFileName);

        using (var store = WeightStore.Open(dir.Path))
        {
            AssertMentions(Assert.Throws<CheckpointException>(() => store.Load(Up3)), $"'{Up3}'", index);
        }

        // The index claims a tensor that the shard does not hold.
        string shard = map.Values.First();
        var text = File.ReadAllText(index).Replace("\"weight_map\":{", $"\"weight_map\":{{\"{Up3}\":\"{shard}\",");
        File.WriteAllText(index, text);
        using var lying = WeightStore.Open(dir.Path);
        AssertMentions(Assert.Throws<CheckpointException>(() => lying.Load(Up3)), $"'{Up3}'", index, dir.File(shard));
    }

    [Fact]
    public void WrongShapeNamesExpectedAndActual()
    {
        using var store = WeightStore.Open(FixtureDir("llama-gqa"));
        const string name = "model.layers.1.mlp.up_proj.weight";
        var ex = Assert.Throws<CheckpointException>(() => store.Load(name, ScalarType.Float32, [64, 176]));
        AssertMentions(ex, $"'{name}'", FixtureFile("llama-gqa"), "[176, 64]", "expected [64, 176]");
        Assert.Equal(0, store.LoadedTensorCount);
    }

    [Fact]
    public void TruncatedFileNamesExpectedAndActualSize()
    {
        using var dir = new TempDir();
        string path = dir.File("model.safetensors");
        var bytes = File.ReadAllBytes(FixtureFile("mixtral"));
        File.WriteAllBytes(path, bytes[..^100]);
        var ex = Assert.Throws<CheckpointException>(() => new SafeTensorsFile(path));
        AssertMentions(ex, path, "truncated", $"expected {bytes.Length} bytes", $"file has {bytes.Length - 100}");

        // Through the store, the failure surfaces on first use, still naming the file.
        using var store = WeightStore.Open(dir.Path);
        AssertMentions(Assert.Throws<CheckpointException>(() => store.Load("model.norm.weight")), path, "truncated");
    }

    [Fact]
    public void UnknownDTypeIsRejected()
    {
        using var dir = new TempDir();
        string path = dir.File("x.safetensors");
        WriteRaw(path, """{"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}}""", 4);
        var ex = Assert.Throws<CheckpointException>(() => new SafeTensorsFile(path));
        AssertMentions(ex, path, "'w'", "F8_E4M3", "BF16");
    }

    [Theory]
    [InlineData("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]""", "malformed safetensors header JSON")]
    [InlineData("""[1, 2, 3]""", "expected an object")]
    [InlineData("""{"__metadata__":{"format":7}}""", "not a string")]
    [InlineData("""{"w":{"dtype":"F32","shape":[4]}}""", "'data_offsets'")]
    [InlineData("""{"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}}""", "non-negative")]
    [InlineData("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}}""", "begin after end")]
    [InlineData("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}""", "needs 16")]
    [InlineData("""{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}""", "overlap")]
    public void MalformedHeaderIsRejected(string header, string expected)
    {
        using var dir = new TempDir();
        string path = dir.File("bad.safetensors");
        WriteRaw(path, header, 16);
        var ex = Assert.Throws<CheckpointException>(() => new SafeTensorsFile(path));
        AssertMentions(ex, path, expected);
    }

    [Fact]
    public void HeaderLengthLargerThanFileIsRejected()
    {
        using var dir = new TempDir();
        string path = dir.File("bad.safetensors");
        WriteRaw(path, """{"__metadata__":{}}""", 0, declaredHeaderLength: 4096);
        AssertMentions(Assert.Throws<CheckpointException>(() => new SafeTensorsFile(path)), path, "4096", "larger than the file");

        WriteRaw(path, "{}", 0, declaredHeaderLength: long.MaxValue);
        AssertMentions(Assert.Throws<CheckpointException>(() => new SafeTensorsFile(path)), path, "exceeds");

        File.WriteAllBytes(path, [1, 2, 3]);
        AssertMentions(Assert.Throws<CheckpointException>(() => new SafeTensorsFile(path)), path, "file has 3");
    }

    [Fact]
    public void MalformedIndexJsonIsRejected()
    {
        using var dir = new TempDir();
        string index = dir.File(WeightStore.IndexFileName);
        File.WriteAllText(index, """{"weight_map": {"a": "model-00001.safetensors",""");
        AssertMentions(Assert.Throws<CheckpointException>(() => WeightStore.Open(dir.Path)), index, "malformed checkpoint index JSON");

        File.WriteAllText(index, """{"metadata": {}}""");
        AssertMentions(Assert.Throws<CheckpointException>(() => WeightStore.Open(dir.Path)), index, "weight_map");

        File.WriteAllText(index, """{"weight_map": {"a": "../../etc/passwd"}}""");
        AssertMentions(Assert.Throws<CheckpointException>(() => WeightStore.Open(dir.Path)), index, "outside");
    }

    [Fact]
    public void IndexNamingMissingShardIsRejected()
    {
        using var dir = new TempDir();
        var map = SafeTensorsWeightStoreTests.WriteSharded("bloom", dir.Path, 2);
        string gone = map.Values.Last();
        File.Delete(dir.File(gone));
        // Opening succeeds (a partial hub download lacks shards on purpose); using a tensor of the missing shard fails.
        using var store = WeightStore.Open(dir.Path);
        string lost = map.First(kv => kv.Value == gone).Key;
        Assert.False(store.HasFileFor(lost));
        var ex = Assert.Throws<CheckpointException>(() => store.Load(lost));
        AssertMentions(ex, dir.File(WeightStore.IndexFileName), dir.File(gone), "does not exist");
    }

    [Fact]
    public void EmptyOrMissingDirectoryIsRejected()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("pytorch_model.bin"), "not supported");
        var ex = Assert.Throws<CheckpointException>(() => WeightStore.Open(dir.Path));
        AssertMentions(ex, dir.Path, WeightStore.SingleFileName, WeightStore.IndexFileName, "only the safetensors format");

        string missing = dir.File("nope");
        AssertMentions(Assert.Throws<CheckpointException>(() => WeightStore.Open(missing)), missing, "does not exist");
        AssertMentions(Assert.Throws<CheckpointException>(() => new SafeTensorsFile(missing)), missing);
    }
}
