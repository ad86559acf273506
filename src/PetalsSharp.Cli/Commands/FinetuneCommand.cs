using System.CommandLine;
using System.Globalization;
using PetalsSharp.Models;
using PetalsSharp.Text.Tokenizers;
using PetalsSharp.Training;
using Spectre.Console;

namespace PetalsSharp.Cli.Commands;

/// <summary><c>petals finetune</c>: trains prompts or a client-side adapter through the swarm and saves them.</summary>
public static class FinetuneCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption();
        var data = new Option<string>("--data") { Description = "JSON Lines: {\"text\": ...} or {\"prompt\": ..., \"completion\": ...} per line", Required = true };
        var mode = new Option<string>("--mode") { Description = "ptune, deep_ptune or adapter (LoRA on the LM head)", DefaultValueFactory = _ => "ptune" };
        var steps = new Option<int>("--steps") { Description = "Optimizer steps", DefaultValueFactory = _ => 100 };
        var lr = new Option<double>("--lr") { Description = "AdamW learning rate", DefaultValueFactory = _ => 1e-2 };
        var output = new Option<string>("--out", "-o") { Description = "Where to save the trained parameters (.safetensors)", Required = true };
        var preSeqLen = new Option<int>("--pre-seq-len") { Description = "Virtual tokens (ptune, deep_ptune)", DefaultValueFactory = _ => 16 };
        var batch = new Option<int>("--batch-size") { Description = "Sequences per step", DefaultValueFactory = _ => 4 };
        var rank = new Option<int>("--lora-rank") { Description = "LoRA rank (adapter)", DefaultValueFactory = _ => 8 };
        var alpha = new Option<double>("--lora-alpha") { Description = "LoRA alpha (adapter); the update is scaled by alpha / rank", DefaultValueFactory = _ => 16 };
        var clip = new Option<double>("--max-grad-norm") { Description = "Clip the gradient norm to this (0 = off)", DefaultValueFactory = _ => 1.0 };
        var decay = new Option<double>("--weight-decay") { Description = "AdamW weight decay", DefaultValueFactory = _ => 0.0 };
        var warmup = new Option<int>("--warmup-steps") { Description = "Steps of linear warmup from 0 to --lr", DefaultValueFactory = _ => 0 };
        var schedule = new Option<string>("--lr-schedule") { Description = "After the warmup: constant, linear (to 0) or cosine (to 0)", DefaultValueFactory = _ => "constant" };
        var evalData = new Option<string?>("--eval-data") { Description = "Held-out JSON Lines (same format as --data); its loss is printed every --eval-every steps and at the end" };
        var evalEvery = new Option<int>("--eval-every") { Description = "Steps between evaluations on --eval-data", DefaultValueFactory = _ => 10 };
        var seed = new Option<int>("--seed") { Description = "Seed of the initial parameters and the data order", DefaultValueFactory = _ => 0 };
        var remote = new ModelOpener.RemoteOptionSet();
        var cmd = new Command("finetune", "Train prompts (ptune, deep_ptune) or a LoRA adapter on the LM head through the swarm; the blocks stay frozen on the servers.\n\nExample:\n  petals finetune -m ./my-model --initial-peers 127.0.0.1:31337 --data train.jsonl --mode ptune --steps 100 --lr 1e-2 --out prompts.safetensors\n  petals generate -m ./my-model --initial-peers 127.0.0.1:31337 --tuned prompts.safetensors -p \"Hello\"")
        {
            model, data, mode, steps, lr, output, preSeqLen, batch, rank, alpha, clip, decay, warmup, schedule, evalData, evalEvery, seed,
        };
        remote.AddTo(cmd);
        cmd.SetAction(async (pr, ct) =>
        {
            var modelDir = pr.GetValue(model)!;
            if (!Directory.Exists(modelDir)) throw new CliException($"model folder not found: {modelDir}");
            TuningMode tuningMode;
            try { tuningMode = TuningModes.Parse(pr.GetValue(mode)!); }
            catch (ArgumentException e) { throw new CliException($"--mode: {e.Message}"); }
            LrSchedule lrSchedule;
            try { lrSchedule = LearningRateSchedule.Parse(pr.GetValue(schedule)!); }
            catch (ArgumentException e) { throw new CliException($"--lr-schedule: {e.Message}"); }
            var trainer = new TrainerOptions(pr.GetValue(steps), pr.GetValue(lr), pr.GetValue(decay), pr.GetValue(clip), pr.GetValue(batch), pr.GetValue(seed))
            {
                WarmupSteps = pr.GetValue(warmup), Schedule = lrSchedule, EvalEvery = pr.GetValue(evalEvery),
            };
            if (trainer.WarmupSteps < 0) throw new CliException("--warmup-steps must not be negative");
            if (trainer.EvalEvery < 1) throw new CliException("--eval-every must be at least 1");
            if (trainer.Steps < 1) throw new CliException("--steps must be at least 1");
            if (!(trainer.LearningRate > 0)) throw new CliException("--lr must be positive");
            if (trainer.BatchSize < 1) throw new CliException("--batch-size must be at least 1");
            if (pr.GetValue(preSeqLen) < 1) throw new CliException("--pre-seq-len must be at least 1");
            if (pr.GetValue(rank) < 1) throw new CliException("--lora-rank must be at least 1");
            // The data is checked before connecting: a typo in line 900 should not cost a swarm connection.
            var tokenizer = TokenizerLoader.TryLoad(modelDir) ?? throw new CliException($"{modelDir} has no tokenizer; finetune needs one to read --data");
            var examples = FinetuneData.LoadJsonl(pr.GetValue(data)!, tokenizer);
            if (pr.GetValue(evalData) is { } evalPath) trainer = trainer with { EvalExamples = FinetuneData.LoadJsonl(evalPath, tokenizer) };
            var outPath = pr.GetValue(output)!;

            using var lm = await ModelOpener.OpenAsync(modelDir, TorchSharp.torch.ScalarType.Float32, remote.Read(pr), ct);
            using var tuned = new TunedModel(lm, new TuningOptions(tuningMode, pr.GetValue(preSeqLen), pr.GetValue(rank), pr.GetValue(alpha), pr.GetValue(seed)));
            Console.Error.WriteLine($"training {TuningModes.Name(tuningMode)}: {tuned.Trainable.Sum(p => p.Parameter.numel())} parameters, {examples.Count} examples");
            var result = await RunAsync(tuned, examples, trainer, ct);
            TunedFile.Save(tuned, outPath, Swarm.ModelNames.FromFolder(modelDir));
            var held = result.EvalLosses.Count > 0 ? FormattableString.Invariant($"; eval loss {result.EvalLosses[^1].Loss:F4}") : "";
            Console.WriteLine(FormattableString.Invariant($"loss {result.FirstLoss:F4} -> {result.LastLoss:F4}{held}; saved {outPath}"));
            return 0;
        });
        return cmd;
    }

    /// <summary>Trains with a progress bar on a terminal; one "step N/M loss X" line per step either way.</summary>
    static async Task<TrainingResult> RunAsync(TunedModel tuned, IReadOnlyList<TrainingExample> examples, TrainerOptions options, CancellationToken ct)
    {
        static string Line(TrainingProgress p) =>
            string.Create(CultureInfo.InvariantCulture,
                $"step {p.Step}/{p.Steps} loss {p.Loss:F4} grad_norm {p.GradNorm:F3} lr {p.LearningRate:G4}{(p.EvalLoss is { } e ? $" eval_loss {e:F4}" : "")}");
        if (Console.IsOutputRedirected || Console.IsErrorRedirected)
            return await Trainer.TrainAsync(tuned, examples, options, new SyncProgress(p => Console.WriteLine(Line(p))), ct);
        TrainingResult result = null!;
        await AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .StartAsync(async ctx =>
            {
                var task = ctx.AddTask("fine-tuning", maxValue: options.Steps);
                result = await Trainer.TrainAsync(tuned, examples, options, new SyncProgress(p =>
                {
                    AnsiConsole.MarkupLine(Markup.Escape(Line(p)));
                    task.Description = string.Create(CultureInfo.InvariantCulture, $"loss {p.Loss:F4}");
                    task.Value = p.Step;
                }), ct);
            });
        return result;
    }

    /// <summary>Reports on the training loop's thread, so lines come out in step order (Progress&lt;T&gt; posts to the pool).</summary>
    sealed class SyncProgress(Action<TrainingProgress> report) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value) => report(value);
    }
}
