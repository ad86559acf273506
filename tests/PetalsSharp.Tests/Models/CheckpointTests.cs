using System.Text.Json.Nodes;
using PetalsSharp.Models;
using PetalsSharp.Models.Weights;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models;

/// <summary>Selective loading and the errors a bad checkpoint gets, at the model level.</summary>
public sealed class CheckpointTests
{
    static readonly string Fixture = TestData.Path("llama-gqa");

    /// <summary>A copy of the fixture with config.json edited.</summary>
    static string WithConfig(Action<JsonObject> edit)
    {
        var dir = Directory.CreateTempSubdirectory("petals-ckpt").FullName;
        File.Copy(Path.Combine(Fixture, "model.safetensors"), Path.Combine(dir, "model.safetensors"));
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixture, "config.json")))!.AsObject();
        edit(json);
        File.WriteAllText(Path.Combine(dir, "config.json"), json.ToJsonString());
        return dir;
    }

    [Fact]
    public void Loading_one_block_reads_only_its_tensors()
    {
        using var ckpt = Checkpoint.Open(Fixture);
        using var block = ckpt.LoadBlock(1);
        Assert.Equal(9, ckpt.Weights.LoadedTensorCount);
        using var ends = ckpt.LoadEnds();
        Assert.Equal(9 + 3, ckpt.Weights.LoadedTensorCount);
    }

    [Fact]
    public void Bf16_storage_keeps_greedy_parity_within_half_precision_noise()
    {
        using var scope = NewDisposeScope();
        using var r = Reference.Load("llama-gqa");
        using var lm = CausalLM.Load(Fixture, new ModelLoadOptions(ScalarType.BFloat16));
        var logits = lm.Forward(r.Longs("input_ids"));
        Assert.Equal(ScalarType.Float32, logits.dtype);
        var diff = TensorAssert.MaxAbsDiff(r.Floats("logits"), logits);
        Assert.InRange(diff, 1e-6, 0.5);   // bf16 weights: about 1e-2 relative, as the fixture README says
    }

    [Fact]
    public void A_block_the_checkpoint_lacks_is_a_missing_tensor_error()
    {
        using var ckpt = Checkpoint.Open(WithConfig(c => c["num_hidden_layers"] = 4));
        var e = Assert.Throws<CheckpointException>(() => ckpt.LoadBlock(3));
        Assert.Contains("model.layers.3.", e.Message);
        Assert.Contains("model.safetensors", e.Message);
    }

    [Fact]
    public void A_shape_that_disagrees_with_the_config_is_named()
    {
        using var ckpt = Checkpoint.Open(WithConfig(c => c["intermediate_size"] = 200));
        var e = Assert.Throws<CheckpointException>(() => ckpt.LoadBlock(0));
        Assert.Contains("model.layers.0.mlp.gate_proj.weight", e.Message);
        Assert.Contains("200", e.Message);
    }

    [Fact]
    public void Tied_config_without_lm_head_loads_untied_without_it_fails()
    {
        using (var tied = Checkpoint.Open(WithConfig(c => c["tie_word_embeddings"] = true)))
        using (var ends = tied.LoadEnds())
            Assert.Equal(2, tied.Weights.LoadedTensorCount);
        var dir = Directory.CreateTempSubdirectory("petals-nohead").FullName;
        File.Copy(Path.Combine(Fixture, "config.json"), Path.Combine(dir, "config.json"));
        using (var src = Checkpoint.Open(Fixture))
        {
            var names = src.Weights.Names.Where(n => n != "lm_head.weight").OrderBy(n => n, StringComparer.Ordinal).ToList();
            SafeTensorsWriter.Write(Path.Combine(dir, "model.safetensors"), names.Select(n => (n, src.Weights.Load(n))));
        }
        using var ckpt = Checkpoint.Open(dir);
        var e = Assert.Throws<CheckpointException>(() => ckpt.LoadEnds());
        Assert.Contains("lm_head.weight", e.Message);
    }

    [Fact]
    public void A_folder_without_weights_says_so()
    {
        var dir = Directory.CreateTempSubdirectory("petals-noweights").FullName;
        File.Copy(Path.Combine(Fixture, "config.json"), Path.Combine(dir, "config.json"));
        var e = Assert.Throws<CheckpointException>(() => Checkpoint.Open(dir));
        Assert.Contains(dir, e.Message);
    }

    [Fact]
    public void Block_index_outside_the_model_is_rejected()
    {
        using var ckpt = Checkpoint.Open(Fixture);
        Assert.Throws<ArgumentOutOfRangeException>(() => ckpt.LoadBlock(3));
        Assert.Throws<ArgumentOutOfRangeException>(() => ckpt.LoadBlocks(2, 5));
    }
}
