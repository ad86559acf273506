using PetalsSharp.Client;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Training;
using Xunit;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace PetalsSharp.Tests.Training;

/// <summary>
/// Prompt tuning through two server processes: shallow prompts against the HF fixture, deep prompts against local
/// autograd. No dispose scope: tests resume on other threads after awaits.
/// </summary>
[Trait("Category", "Processes")]
[Collection(TrainingSwarmCollection.Name)]
public sealed class PromptTuningTests(TrainingSwarm swarm)
{
    static readonly Reference Ref = Reference.Load("llama-gqa");

    [Fact]
    public async Task Ptune_loss_logits_and_prompt_gradient_match_the_fixture_through_two_servers()
    {
        using var lm = await swarm.ConnectAsync();
        var tuner = new PromptTuner(Ref.Floats("prompt_tuning.prompt_embeddings"));
        using var tuned = new TunedModel(lm, new TuningOptions(TuningMode.PTune, PreSeqLen: 4), tuner);
        var ids = Ref.Longs("input_ids");
        var logits = tuned.Forward(ids);
        TensorAssert.Close(Ref.Floats("prompt_tuning.logits_real_positions"), logits, 1e-3, 1e-4, "logits_real_positions");
        var loss = TunedModel.CausalLoss(logits, ids);
        tuned.Backward(loss);
        var expectedLoss = Ref["prompt_tuning.loss"].GetDouble();
        Assert.True(Math.Abs(loss.item<float>() - expectedLoss) <= 1e-4 + 1e-5 * Math.Abs(expectedLoss),
            $"loss {loss.item<float>()} vs fixture {expectedLoss}");
        TensorAssert.Close(Ref.Floats("prompt_tuning.grad_prompt_embeddings"), tuner.Prompts.grad!, 1e-4, 1e-3, "grad_prompt_embeddings");
    }

    [Fact]
    public async Task Deep_prompts_through_two_servers_match_local_autograd()
    {
        using var remoteLm = await swarm.ConnectAsync();
        using var localLm = CausalLM.Load(TrainingSwarm.ModelDir);
        manual_seed(3);
        var prompts = randn(4, 64) * 0.5;
        var deep = randn(3, 4, 64) * 0.3;                   // non-zero, so every block's prompt matters
        var ids = Ref.Longs("input_ids");
        (float Loss, Tensor Prompt, Tensor Deep) Run(CausalLM lm)
        {
            var tuner = new PromptTuner(prompts, deep);
            using var tuned = new TunedModel(lm, new TuningOptions(TuningMode.DeepPTune, PreSeqLen: 4), tuner);
            var loss = tuned.Loss(ids);
            tuned.Backward(loss);
            return (loss.item<float>(), tuner.Prompts.grad!.clone(), tuner.IntermediatePrompts!.grad!.clone());
        }
        var expected = Run(localLm);
        var actual = Run(remoteLm);
        Assert.True(Math.Abs(expected.Loss - actual.Loss) <= 1e-5, $"loss {actual.Loss} vs local {expected.Loss}");
        Assert.True(TensorAssert.MaxAbsDiff(expected.Prompt, actual.Prompt) <= 1e-5, $"prompt grad diff {TensorAssert.MaxAbsDiff(expected.Prompt, actual.Prompt)}");
        Assert.True(TensorAssert.MaxAbsDiff(expected.Deep, actual.Deep) <= 1e-5, $"deep grad diff {TensorAssert.MaxAbsDiff(expected.Deep, actual.Deep)}");
        Assert.True(actual.Deep.abs().sum(1).sum(1).min().item<float>() > 0, "every block's deep prompt must get a gradient");
    }

    [Fact]
    public async Task Generation_with_deep_prompts_matches_local_and_differs_from_the_base_model()
    {
        using var remoteLm = await swarm.ConnectAsync();
        using var localLm = CausalLM.Load(TrainingSwarm.ModelDir);
        manual_seed(4);
        var prompts = randn(4, 64) * 0.5;
        var deep = randn(3, 4, 64) * 0.5;
        var rows = Ref.IdRows("generation.prompt_ids");
        async Task<IReadOnlyList<IReadOnlyList<int>>> Generate(CausalLM lm, bool tunedRun)
        {
            using var tuned = new TunedModel(lm, new TuningOptions(TuningMode.DeepPTune, PreSeqLen: 4), new PromptTuner(prompts, deep));
            var options = new GenerationOptions { MaxNewTokens = 12, IgnoreEos = true, Tuning = tunedRun ? tuned.ForGeneration() : null };
            return (await lm.GenerateAsync(rows, options)).NewTokens;
        }
        var local = await Generate(localLm, true);
        Assert.Equal(local, await Generate(remoteLm, true));
        Assert.NotEqual(Ref.IdRows("generation.new_tokens"), local);
        Assert.Equal(Ref.IdRows("generation.new_tokens"), await Generate(remoteLm, false));
    }
}
