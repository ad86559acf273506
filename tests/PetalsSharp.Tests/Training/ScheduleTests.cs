using PetalsSharp.Models;
using PetalsSharp.Training;
using Xunit;

namespace PetalsSharp.Tests.Training;

/// <summary>Learning-rate schedules as HF's schedulers give them, applied to the optimizer; held-out evaluation.</summary>
public sealed class ScheduleTests
{
    // HF, 10 steps, 2 warmup, base 1: get_*_schedule_with_warmup(...) lr_lambda(step - 1) for step 1..10.
    [Theory]
    [InlineData(LrSchedule.Constant, new[] { 0, 0.5, 1, 1, 1, 1, 1, 1, 1, 1 })]
    [InlineData(LrSchedule.Linear, new[] { 0, 0.5, 1, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125 })]
    [InlineData(LrSchedule.Cosine, new[] { 0, 0.5, 1, 0.96194, 0.85355, 0.69134, 0.5, 0.30866, 0.14645, 0.03806 })]
    public void Rates_follow_hf_schedulers(LrSchedule schedule, double[] expected)
    {
        var rates = Enumerable.Range(1, 10).Select(s => LearningRateSchedule.At(s, 10, 2, schedule, 1.0)).ToArray();
        for (int i = 0; i < 10; i++) Assert.Equal(expected[i], rates[i], 4);
        Assert.Equal(0.5 * 3e-2, LearningRateSchedule.At(7, 10, 2, LrSchedule.Linear, 3e-2), 10);
        Assert.Throws<ArgumentException>(() => LearningRateSchedule.Parse("step"));
        Assert.Equal(LrSchedule.Cosine, LearningRateSchedule.Parse("Cosine"));
    }

    [Fact]
    public async Task The_optimizer_uses_the_scheduled_rate_and_held_out_loss_is_reported()
    {
        using var lm = CausalLM.Load(TestData.Path("llama-gqa"));
        using var tuned = new TunedModel(lm, new TuningOptions(TuningMode.PTune, PreSeqLen: 4, Seed: 1));
        IReadOnlyList<TrainingExample> data = Enumerable.Range(0, 4).Select(_ => new TrainingExample([5, 6, 7, 5, 6, 7, 5, 6, 7], PromptLength: 2)).ToList();
        using var before = tuned.Trainable[0].Parameter.detach().clone();

        // One warmup step: the first step runs at rate 0, so nothing moves.
        var first = await Trainer.TrainAsync(tuned, data, new TrainerOptions(Steps: 1, LearningRate: 5e-2, BatchSize: 2) { WarmupSteps = 1 });
        Assert.True(tuned.Trainable[0].Parameter.equal(before).all().item<bool>(), "a step at rate 0 must not change the prompts");

        var seen = new List<TrainingProgress>();
        var options = new TrainerOptions(Steps: 20, LearningRate: 5e-2, BatchSize: 2)
        {
            WarmupSteps = 2, Schedule = LrSchedule.Cosine, EvalExamples = data.Take(2).ToList(), EvalEvery = 5,
        };
        var result = await Trainer.TrainAsync(tuned, data, options, new SyncProgress(seen.Add));
        Assert.Equal(Enumerable.Range(1, 20).Select(s => LearningRateSchedule.At(s, 20, 2, LrSchedule.Cosine, 5e-2)), seen.Select(p => p.LearningRate));
        Assert.Equal([5, 10, 15, 20], result.EvalLosses.Select(e => e.Step));
        Assert.Equal(result.EvalLosses.Select(e => (double?)e.Loss), seen.Where(p => p.EvalLoss is not null).Select(p => p.EvalLoss));
        Assert.True(result.EvalLosses[^1].Loss < result.EvalLosses[0].Loss, "held-out loss falls on the same pattern");
        // The held-out loss is the plain loss of the tuned model on those examples.
        Assert.Equal(Trainer.Evaluate(tuned, data.Take(2).ToList(), batchSize: 1), result.EvalLosses[^1].Loss, 4);
    }

    sealed class SyncProgress(Action<TrainingProgress> report) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value) => report(value);
    }
}
