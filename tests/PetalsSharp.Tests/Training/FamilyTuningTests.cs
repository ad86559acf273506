using PetalsSharp.Client;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Training;
using Xunit;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace PetalsSharp.Tests.Training;

/// <summary>
/// Prompt tuning on Mistral (its window of 4 is shorter than the 11 prompted positions) and Qwen2 through two server
/// processes: shallow prompts against the HF fixture's loss, logits and gradient; deep prompts against local autograd.
/// The inputs come from a private generator, so parallel tests drawing from torch's global one cannot change them.
/// </summary>
[Trait("Category", "Processes")]
public sealed class FamilyTuningTests
{
    [Theory]
    [InlineData("mistral")]
    [InlineData("qwen2")]
    public async Task Ptune_matches_the_fixture_and_deep_ptune_matches_local_autograd(string fixture)
    {
        var dir = TestData.Path(fixture);
        using var reference = Reference.Load(fixture);
        var servers = await Task.WhenAll(ServerProcess.StartAsync(dir, 0, 2), ServerProcess.StartAsync(dir, 2, 3));
        try
        {
            using var remote = await DistributedModel.ConnectAsync(dir, servers.Select(s => s.Address));
            var ids = reference.Longs("input_ids");

            var tuner = new PromptTuner(reference.Floats("prompt_tuning.prompt_embeddings"));
            using (var tuned = new TunedModel(remote, new TuningOptions(TuningMode.PTune, PreSeqLen: 4), tuner))
            {
                var logits = tuned.Forward(ids);
                TensorAssert.Close(reference.Floats("prompt_tuning.logits_real_positions"), logits, 1e-3, 1e-4, $"{fixture} logits_real_positions");
                var loss = TunedModel.CausalLoss(logits, ids);
                tuned.Backward(loss);
                double expectedLoss = reference["prompt_tuning.loss"].GetDouble();
                Assert.True(Math.Abs(loss.item<float>() - expectedLoss) <= 1e-4 + 1e-5 * Math.Abs(expectedLoss),
                    $"{fixture}: loss {loss.item<float>()} vs fixture {expectedLoss}");
                TensorAssert.Close(reference.Floats("prompt_tuning.grad_prompt_embeddings"), tuner.Prompts.grad!, 1e-4, 1e-3, $"{fixture} prompt grad");
            }

            using var local = CausalLM.Load(dir);
            int hidden = local.Config.HiddenSize, layers = local.Config.NumLayers;
            using var g = new Generator(3);
            var prompts = randn([4, hidden], generator: g) * 0.5;                                 // [P, H]
            var deep = randn([layers, 4, hidden], generator: g) * 0.3;                            // [L, P, H]
            (float Loss, Tensor Prompt, Tensor Deep) Run(CausalLM lm)
            {
                var t = new PromptTuner(prompts, deep);
                using var tuned = new TunedModel(lm, new TuningOptions(TuningMode.DeepPTune, PreSeqLen: 4), t);
                var loss = tuned.Loss(ids);
                tuned.Backward(loss);
                return (loss.item<float>(), t.Prompts.grad!.clone(), t.IntermediatePrompts!.grad!.clone());
            }
            var expected = Run(local);
            var actual = Run(remote);
            Assert.True(Math.Abs(expected.Loss - actual.Loss) <= 1e-5, $"{fixture}: deep loss {actual.Loss} vs local {expected.Loss}");
            Assert.True(TensorAssert.MaxAbsDiff(expected.Prompt, actual.Prompt) <= 1e-5, $"{fixture}: prompt grad differs");
            Assert.True(TensorAssert.MaxAbsDiff(expected.Deep, actual.Deep) <= 1e-5, $"{fixture}: deep grad differs");
            Assert.True(actual.Deep.abs().sum(1).sum(1).min().item<float>() > 0, "every block's deep prompt must get a gradient");
        }
        finally
        {
            foreach (var s in servers) s.Dispose();
        }
    }
}
