using PetalsSharp.Models;
using PetalsSharp.Models.Lora;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Adapters;

/// <summary>
/// Server-side LoRA works for every family, not only Llama: an adapter on all of a family's linears (Falcon's fused
/// query_key_value, BLOOM's dense layers, Mixtral's router and experts) equals the same blocks with merged weights,
/// in a full forward, in cached steps, and in the gradient the client receives.
/// </summary>
public sealed class LoraFamilyTests
{
    [Theory]
    [InlineData("llama-gqa")]
    [InlineData("mixtral")]
    [InlineData("falcon-new")]
    [InlineData("bloom")]
    [InlineData("mistral")]
    [InlineData("qwen2")]
    public void Blocks_with_the_adapter_equal_merged_weights_in_forward_steps_and_backward(string fixture)
    {
        var model = ModelConfigLoader.Load(TestData.Path(fixture));
        var dir = TestAdapter.Write(TestAdapter.NewDir(), seed: 5, fixture: fixture);
        using var adapter = LoraAdapter.Load("fam", dir, model);
        Assert.Equal(model.NumLayers * ((ILoraTargets)model.Family).LoraModules(model).Count, adapter.Targets.Count);
        using var baseCkpt = Checkpoint.Open(TestData.Path(fixture));
        using var mergedCkpt = Checkpoint.Open(TestAdapter.WriteMerged(dir));
        using var plain = baseCkpt.LoadBlocks(0, model.NumLayers);
        using var merged = mergedCkpt.LoadBlocks(0, model.NumLayers);
        using var scope = NewDisposeScope();
        manual_seed(3);
        var x = randn(2, 5, model.HiddenSize);                                         // [B, T, H]
        var options = new ForwardOptions { Adapter = adapter };

        using (no_grad())
        {
            var adapted = plain.Forward(x, options);                                    // [B, T, H]
            TensorAssert.Close(merged.Forward(x), adapted, 1e-4, 1e-4, $"{fixture}: adapted vs merged");
            Assert.True(TensorAssert.MaxAbsDiff(plain.Forward(x), adapted) > 1e-2, "the adapter must change the output");

            using var session = (LocalBlockSession)plain.OpenSession(new SessionOptions(2, 8) { Adapter = adapter });
            using var mergedSession = (LocalBlockSession)merged.OpenSession(new SessionOptions(2, 8));
            TensorAssert.Close(mergedSession.Step(x.narrow(1, 0, 4)), session.Step(x.narrow(1, 0, 4)), 1e-4, 1e-4, $"{fixture}: prefill");
            TensorAssert.Close(mergedSession.Step(x.narrow(1, 4, 1)), session.Step(x.narrow(1, 4, 1)), 1e-4, 1e-4, $"{fixture}: decode");
        }

        using var grad = enable_grad();
        var upstream = randn(2, 5, model.HiddenSize);                                  // [B, T, H]
        var xa = x.clone().requires_grad_(true);                                        // [B, T, H]
        (plain.Forward(xa, options) * upstream).sum().backward();
        var xm = x.clone().requires_grad_(true);                                        // [B, T, H]
        (merged.Forward(xm) * upstream).sum().backward();
        // Merged weights round differently (W + BA is summed before the matmul), so compare relative to |grad|.
        double relative = TensorAssert.MaxAbsDiff(xm.grad!, xa.grad!) / xm.grad!.abs().max().item<float>();
        Assert.True(relative <= 1e-4, $"{fixture}: input gradient vs merged, max |diff| / max |grad| = {relative:E2}");
    }

    [Fact]
    public void Falcon_and_bloom_adapters_name_their_own_modules_when_a_target_is_unknown()
    {
        var model = ModelConfigLoader.Load(TestData.Path("bloom"));
        var dir = TestAdapter.Write(TestAdapter.NewDir(), fixture: "bloom");
        File.WriteAllText(Path.Combine(dir, LoraConfig.FileName),
            File.ReadAllText(Path.Combine(dir, LoraConfig.FileName)).Replace("\"dense\"", "\"q_proj\""));
        var e = Assert.Throws<LoraException>(() => LoraAdapter.Load("bad", dir, model).Dispose());
        Assert.Contains("'q_proj'", e.Message);
        Assert.Contains("query_key_value", e.Message);
    }
}
