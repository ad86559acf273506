using static TorchSharp.torch;

namespace PetalsSharp.Training;

/// <summary>Optimisation settings (AdamW, gradient-norm clipping).</summary>
/// <param name="Steps">Optimizer steps.</param>
/// <param name="LearningRate">AdamW learning rate.</param>
/// <param name="WeightDecay">AdamW decoupled weight decay.</param>
/// <param name="MaxGradNorm">Clip the gradients' global L2 norm to this (torch.nn.utils.clip_grad_norm_); 0 = off.</param>
/// <param name="BatchSize">Sequences per step (right-padded to the longest).</param>
/// <param name="Seed">Order in which examples are drawn.</param>
public sealed record TrainerOptions(int Steps, double LearningRate = 1e-2, double WeightDecay = 0.0, double MaxGradNorm = 1.0,
    int BatchSize = 4, int Seed = 0)
{
    /// <summary>Steps of linear warmup from 0 (see <see cref="LearningRateSchedule"/>).</summary>
    public int WarmupSteps { get; init; }

    /// <summary>What the rate does after the warmup.</summary>
    public LrSchedule Schedule { get; init; } = LrSchedule.Constant;

    /// <summary>Held-out examples whose mean loss is measured every <see cref="EvalEvery"/> steps and after the last.</summary>
    public IReadOnlyList<TrainingExample>? EvalExamples { get; init; }

    /// <summary>Steps between evaluations (with <see cref="EvalExamples"/>).</summary>
    public int EvalEvery { get; init; } = 10;
}

/// <summary>One finished step.</summary>
/// <param name="Step">1-based.</param>
/// <param name="Steps">Steps in the run.</param>
/// <param name="Loss">Mean loss of the step's batch.</param>
/// <param name="GradNorm">Global gradient norm before clipping.</param>
/// <param name="LearningRate">The rate this step used.</param>
/// <param name="EvalLoss">Mean loss on the held-out examples after this step, when it was measured.</param>
public sealed record TrainingProgress(int Step, int Steps, double Loss, double GradNorm, double LearningRate = 0, double? EvalLoss = null);

/// <summary>The losses of a run, and the held-out losses by step where they were measured.</summary>
public sealed record TrainingResult(IReadOnlyList<double> Losses)
{
    public IReadOnlyList<(int Step, double Loss)> EvalLosses { get; init; } = [];

    public double FirstLoss => Losses[0];
    public double LastLoss => Losses[^1];
}

/// <summary>
/// The training loop: batches of examples, next-token loss on the scored tokens, backward through the (possibly
/// remote) blocks, gradient clipping and AdamW on the tuned model's trainable parameters only.
/// </summary>
public static class Trainer
{
    public static async Task<TrainingResult> TrainAsync(TunedModel model, IReadOnlyList<TrainingExample> examples, TrainerOptions options,
        IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        if (examples.Count == 0) throw new ArgumentException("no training examples", nameof(examples));
        if (options.Steps < 1) throw new ArgumentOutOfRangeException(nameof(options), "steps must be at least 1");
        if (options.BatchSize < 1) throw new ArgumentOutOfRangeException(nameof(options), "batch size must be at least 1");
        if (!(options.LearningRate > 0)) throw new ArgumentOutOfRangeException(nameof(options), "learning rate must be positive");
        if (options.WarmupSteps < 0) throw new ArgumentOutOfRangeException(nameof(options), "warmup steps must not be negative");
        if (options.EvalEvery < 1) throw new ArgumentOutOfRangeException(nameof(options), "eval-every must be at least 1");
        var parameters = model.Trainable.Select(p => p.Parameter).ToList();
        if (parameters.Count == 0) throw new InvalidOperationException("the model has no trainable parameters");
        using var optimizer = optim.AdamW(parameters, options.LearningRate, weight_decay: options.WeightDecay);
        var order = new Sampler(examples.Count, options.Seed);
        var losses = new List<double>();
        var evals = new List<(int, double)>();
        for (int step = 1; step <= options.Steps; step++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            double rate = LearningRateSchedule.At(step, options.Steps, options.WarmupSteps, options.Schedule, options.LearningRate);
            foreach (var group in optimizer.ParamGroups) group.LearningRate = rate;
            var batch = Enumerable.Range(0, options.BatchSize).Select(_ => examples[order.Next()]).ToList();
            // One step per pool thread: dispose scopes are per thread, and the remote calls block it, not the caller.
            var (loss, norm) = await Task.Run(() => Step(model, optimizer, parameters, batch, options.MaxGradNorm), cancellationToken)
                .ConfigureAwait(false);
            losses.Add(loss);
            double? eval = null;
            if (options.EvalExamples is { Count: > 0 } held && (step % options.EvalEvery == 0 || step == options.Steps))
            {
                eval = await Task.Run(() => Evaluate(model, held, options.BatchSize), cancellationToken).ConfigureAwait(false);
                evals.Add((step, eval.Value));
            }
            progress?.Report(new TrainingProgress(step, options.Steps, loss, norm, rate, eval));
        }
        return new TrainingResult(losses) { EvalLosses = evals };
    }

    /// <summary>Mean next-token loss over every scored token of <paramref name="examples"/>, without gradients.</summary>
    public static double Evaluate(TunedModel model, IReadOnlyList<TrainingExample> examples, int batchSize)
    {
        double total = 0;
        long scored = 0;
        foreach (var batch in examples.Chunk(Math.Max(1, batchSize)))
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            var (ids, labels) = Collate(batch, model.Model.Config.PadTokenId ?? 0);
            long count = labels.narrow(1, 1, labels.shape[1] - 1).ne(TunedModel.IgnoreIndex).sum().item<long>();
            if (count == 0) continue;
            total += TunedModel.CausalLoss(model.Forward(ids), labels).item<float>() * count;
            scored += count;
        }
        return scored == 0 ? double.NaN : total / scored;
    }

    static (double Loss, double GradNorm) Step(TunedModel model, optim.Optimizer optimizer, List<TorchSharp.Modules.Parameter> parameters,
        IReadOnlyList<TrainingExample> batch, double maxGradNorm)
    {
        using var scope = NewDisposeScope();
        // Grad mode is per thread in libtorch, and a pool thread may carry a caller's leaked no_grad: set it here.
        using var grad = enable_grad();
        optimizer.zero_grad();
        var (ids, labels) = Collate(batch, model.Model.Config.PadTokenId ?? 0);
        var loss = TunedModel.CausalLoss(model.Forward(ids), labels);
        model.Backward(loss);
        double norm = maxGradNorm > 0
            ? nn.utils.clip_grad_norm_(parameters, maxGradNorm)
            : Math.Sqrt(parameters.Sum(p => p.grad is null ? 0 : p.grad.pow(2).sum().item<float>()));
        if (double.IsNaN(norm) || double.IsInfinity(norm)) throw new InvalidOperationException($"gradient norm is {norm}; stopping before the parameters are spoiled");
        optimizer.step();
        return (loss.item<float>(), norm);
    }

    /// <summary>
    /// Right-pads a batch: ids <c>[B, T]</c> and labels <c>[B, T]</c> with <see cref="TunedModel.IgnoreIndex"/> on the
    /// padding and on prompt tokens (causal attention keeps right padding from touching real tokens).
    /// </summary>
    public static (Tensor Ids, Tensor Labels) Collate(IReadOnlyList<TrainingExample> batch, int padId)
    {
        int width = batch.Max(e => e.Ids.Count);
        var ids = new long[batch.Count * width];
        var labels = new long[batch.Count * width];
        Array.Fill(ids, padId);
        Array.Fill(labels, TunedModel.IgnoreIndex);
        for (int b = 0; b < batch.Count; b++)
            for (int t = 0; t < batch[b].Ids.Count; t++)
            {
                ids[b * width + t] = batch[b].Ids[t];
                if (t >= batch[b].PromptLength) labels[b * width + t] = batch[b].Ids[t];
            }
        return (tensor(ids, [batch.Count, width]), tensor(labels, [batch.Count, width]));
    }

    /// <summary>Draws examples in shuffled passes, so every example is seen once per epoch.</summary>
    sealed class Sampler(int count, int seed)
    {
        readonly Random _random = new(seed);
        int[] _order = [];
        int _at;

        public int Next()
        {
            if (_at >= _order.Length)
            {
                _order = Enumerable.Range(0, count).ToArray();
                _random.Shuffle(_order);
                _at = 0;
            }
            return _order[_at++];
        }
    }
}
