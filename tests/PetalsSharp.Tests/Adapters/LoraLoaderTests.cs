using System.Text.Json.Nodes;
using PetalsSharp.Models;
using PetalsSharp.Models.Lora;
using PetalsSharp.Tests.Cli;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Adapters;

/// <summary>
/// The PEFT LoRA loader accepts a well-formed adapter, applies it exactly as merged weights would, and refuses every
/// kind of broken adapter with a message that names the adapter and the problem.
/// </summary>
[Trait("Category", "Processes")]
public sealed class LoraLoaderTests
{
    static readonly ModelConfig Model = ModelConfigLoader.Load(TestAdapter.ModelDir);

    static LoraException Rejected(Action<JsonObject>? config = null, Action<List<(string Name, Tensor Value)>>? tensors = null)
    {
        var dir = TestAdapter.Write(TestAdapter.NewDir("bad"), config, tensors);
        return Assert.Throws<LoraException>(() => LoraAdapter.Load("bad", dir, Model).Dispose());
    }

    [Fact]
    public void A_valid_adapter_targets_every_linear_of_every_block_with_scale_alpha_over_r()
    {
        using var adapter = LoraAdapter.Load("tiny", TestAdapter.Write(TestAdapter.NewDir()), Model);
        Assert.Equal(3 * 7, adapter.Targets.Count);
        Assert.Equal(2.0, adapter.Config.Scale);
        Assert.Contains((1, "mlp.down_proj"), adapter.Targets);
    }

    [Fact]
    public void Local_blocks_with_the_adapter_equal_blocks_with_merged_weights()
    {
        var dir = TestAdapter.Write(TestAdapter.NewDir());
        using var adapter = LoraAdapter.Load("tiny", dir, Model);
        using var baseCkpt = Checkpoint.Open(TestAdapter.ModelDir);
        using var mergedCkpt = Checkpoint.Open(TestAdapter.WriteMerged(dir));
        using var plain = baseCkpt.LoadBlocks(0, 3);
        using var merged = mergedCkpt.LoadBlocks(0, 3);
        using var scope = NewDisposeScope();
        manual_seed(3);
        var x = randn(2, 5, 64);
        using var noGrad = no_grad();
        var adapted = plain.Forward(x, new ForwardOptions { Adapter = adapter });
        TensorAssert.Close(merged.Forward(x), adapted, 1e-4, 1e-4, "adapted vs merged");
        Assert.True(TensorAssert.MaxAbsDiff(plain.Forward(x), adapted) > 1e-2, "the adapter must change the output");

        using var session = (LocalBlockSession)plain.OpenSession(new SessionOptions(2, 8) { Adapter = adapter });
        using var mergedSession = (LocalBlockSession)merged.OpenSession(new SessionOptions(2, 8));
        TensorAssert.Close(mergedSession.Step(x.narrow(1, 0, 4)), session.Step(x.narrow(1, 0, 4)), 1e-4, 1e-4, "prefill");
        TensorAssert.Close(mergedSession.Step(x.narrow(1, 4, 1)), session.Step(x.narrow(1, 4, 1)), 1e-4, 1e-4, "decode");
    }

    [Fact]
    public void Layers_to_transform_limits_the_blocks()
    {
        var dir = TestAdapter.Write(TestAdapter.NewDir(), c => c["layers_to_transform"] = new JsonArray(0, 2));
        using var adapter = LoraAdapter.Load("some", dir, Model);
        Assert.Equal([0, 2], adapter.Targets.Select(t => t.Block).Distinct().Order());
    }

    [Fact]
    public void Wrong_shape_is_rejected_naming_the_tensor_and_both_shapes()
    {
        var e = Rejected(tensors: l => l[0] = (l[0].Name, randn(4, 32)));
        Assert.Contains("adapter 'bad'", e.Message);
        Assert.Contains("model.layers.0.self_attn.q_proj.lora_A.weight' has shape [4, 32], the model needs [4, 64]", e.Message);
    }

    [Fact]
    public void Unknown_target_module_is_rejected_listing_the_known_ones()
    {
        var e = Rejected(c => c["target_modules"] = new JsonArray("q_proj", "qkv_proj"));
        Assert.Contains("unknown target module 'qkv_proj'", e.Message);
        Assert.Contains("q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj", e.Message);
    }

    [Fact]
    public void A_norm_is_not_a_target()
    {
        var e = Rejected(c => c["target_modules"] = new JsonArray("input_layernorm"));
        Assert.Contains("unknown target module 'input_layernorm'", e.Message);
    }

    [Fact]
    public void Missing_files_are_rejected()
    {
        var noWeights = TestAdapter.Write(TestAdapter.NewDir());
        File.Delete(Path.Combine(noWeights, "adapter_model.safetensors"));
        Assert.Contains("adapter_model.safetensors not found", Assert.Throws<LoraException>(() => LoraAdapter.Load("a", noWeights, Model)).Message);

        var noConfig = TestAdapter.Write(TestAdapter.NewDir());
        File.Delete(Path.Combine(noConfig, "adapter_config.json"));
        Assert.Contains("adapter_config.json: file not found", Assert.Throws<LoraException>(() => LoraAdapter.Load("a", noConfig, Model)).Message);

        Assert.Contains("folder not found", Assert.Throws<LoraException>(() => LoraAdapter.Load("a", "/nonexistent/lora", Model)).Message);
    }

    [Fact]
    public void Missing_tensor_is_rejected()
    {
        var e = Rejected(tensors: l => l.RemoveAt(l.Count - 1));
        Assert.Contains("1 tensor(s) missing", e.Message);
        Assert.Contains("model.layers.2.mlp.down_proj.lora_B.weight", e.Message);
    }

    [Fact]
    public void NaN_and_infinity_are_rejected()
    {
        var e = Rejected(tensors: l => l[3] = (l[3].Name, full(l[3].Value.shape, float.NaN)));
        Assert.Contains($"has NaN or infinite values", e.Message);
        Assert.Contains("k_proj.lora_B.weight", e.Message);
    }

    [Fact]
    public void Unknown_tensor_is_rejected()
    {
        var e = Rejected(tensors: l => l.Add(("base_model.model.lm_head.lora_A.weight", randn(4, 64))));
        Assert.Contains("unknown tensor 'base_model.model.lm_head.lora_A.weight'", e.Message);
        // Tensors for a block outside layers_to_transform are unknown too.
        var other = Rejected(c => c["layers_to_transform"] = new JsonArray(0), l => l.Add(("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight", randn(4, 64))));
        Assert.Contains("unknown tensor", other.Message);
    }

    [Theory]
    [InlineData("r", "0", "r = 0 must be positive")]
    [InlineData("r", "-2", "r = -2 must be positive")]
    [InlineData("fan_in_fan_out", "true", "fan_in_fan_out = true is not supported")]
    [InlineData("bias", "\"all\"", "bias = \"all\" is not supported")]
    [InlineData("use_dora", "true", "use_dora = true is not supported")]
    [InlineData("peft_type", "\"IA3\"", "peft_type 'IA3' is not supported")]
    [InlineData("layers_to_transform", "[0, 7]", "layers_to_transform names block 7")]
    [InlineData("modules_to_save", "[\"lm_head\"]", "modules_to_save")]
    [InlineData("target_modules", "[]", "target_modules is empty")]
    public void Invalid_or_unsupported_settings_are_rejected(string key, string json, string message)
    {
        var e = Rejected(c => c[key] = JsonNode.Parse(json));
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void Names_default_to_the_folder_and_must_be_unique()
    {
        var dir = TestAdapter.Write(TestAdapter.NewDir("my-lora"));
        using (var set = LoraAdapterSet.Load([dir], Model)) Assert.Equal(["my-lora"], set.Names);
        using (var set = LoraAdapterSet.Load([$"x={dir}", $"y={dir}"], Model)) Assert.Equal(["x", "y"], set.Names);
        Assert.Contains("given twice", Assert.Throws<LoraException>(() => LoraAdapterSet.Load([dir, dir], Model)).Message);
        Assert.Contains("adapter name 'a b'", Assert.Throws<LoraException>(() => LoraAdapterSet.Load([$"a b={dir}"], Model)).Message);
    }

    [Fact]
    public async Task The_server_CLI_refuses_a_bad_adapter_with_a_nonzero_exit()
    {
        var dir = TestAdapter.Write(TestAdapter.NewDir("broken"), tensors: l => l[0] = (l[0].Name, full(l[0].Value.shape, float.NaN)));
        var result = await CliRunner.RunAsync("server", "-m", TestAdapter.ModelDir, "--blocks", "0:3", "--host", "127.0.0.1", "--port", "0",
            "--adapters", dir);
        Assert.NotEqual(0, result.ExitCode);
        Assert.Contains("error: adapter 'broken'", result.Stderr);
        Assert.Contains("NaN or infinite", result.Stderr);
        Assert.DoesNotContain("listening on", result.Stdout);
    }
}
