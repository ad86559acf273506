using System.CommandLine;
using System.Text.Json;
using PetalsSharp.Models;
using PetalsSharp.Models.Bench;
using PetalsSharp.Models.Quant;
using Spectre.Console;
using static TorchSharp.torch;

namespace PetalsSharp.Cli.Commands;

/// <summary>
/// <c>petals bench</c>: what this machine does with a model or a server's span, as llama.cpp's <c>llama-bench</c>
/// reports it (prefill and decode tok/s, weight bytes per token against the measured bandwidth, peak RSS, threads).
/// </summary>
public static class BenchCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption();
        var dtype = Cli.DtypeOption();
        var quant = Cli.QuantOption("the benched blocks (and, for the whole model, the embeddings and LM head)");
        var blocks = new Option<string?>("--blocks") { Description = "Bench only this span, START:END (END exclusive), as 'petals server --blocks' serves it; default: the whole model with its final norm and LM head" };
        var prompt = new Option<int>("--prompt") { Description = "Prompt tokens of the prefill step", DefaultValueFactory = _ => 64 };
        var newTokens = new Option<int>("--new") { Description = "Single-token cached decode steps after the prefill", DefaultValueFactory = _ => 128 };
        var repeats = new Option<int>("--repeats") { Description = "Timed runs after one warm-up; medians are reported", DefaultValueFactory = _ => 3 };
        var json = new Option<bool>("--json") { Description = "Print one JSON object: {\"prefill_tok_s\", \"decode_tok_s\", \"weight_bytes_per_token\", \"bandwidth_bytes_s\", \"dtype\", \"threads\", \"peak_rss_bytes\", \"quant\", ...}" };
        var cmd = new Command("bench", "Measure prefill and decode speed of the local engine, and how close decoding comes to the memory bandwidth.\n\nExamples:\n  petals bench -m ./my-model\n  petals bench -m ./my-model --dtype bf16 --blocks 0:12 --json\n  petals bench -m ./my-model --quant nf4")
        {
            model, dtype, quant, blocks, prompt, newTokens, repeats, json,
        };
        cmd.SetAction(async (pr, ct) =>
        {
            var blocksText = pr.GetValue(blocks);
            (int Start, int End)? span = blocksText is null ? null : ServerCommand.ParseBlocks(blocksText);
            var options = new EngineBenchOptions(pr.GetValue(prompt), pr.GetValue(newTokens), pr.GetValue(repeats));
            if (options.PromptTokens < 1) throw new CliException($"--prompt must be at least 1 token (got {options.PromptTokens})");
            if (options.NewTokens < 1) throw new CliException($"--new must be at least 1 token (got {options.NewTokens})");
            if (options.Repeats < 1) throw new CliException($"--repeats must be at least 1 (got {options.Repeats})");
            Cli.ParseDtypeOrDefault(pr.GetValue(dtype));   // a bad --dtype fails before any download
            var format = Cli.ParseQuant(pr.GetValue(quant));
            var source = await ModelSource.ResolveAsync(pr.GetValue(model)!,
                span is { } s ? Hub.WeightSelection.Blocks(s.Start, s.End) : Hub.WeightSelection.All, ct);
            var config = ModelConfigLoader.Load(source.Directory);
            var (start, end) = span ?? (0, config.NumLayers);
            if (end > config.NumLayers)
                throw new CliException($"--blocks {blocksText} is outside the model: it has {config.NumLayers} blocks (0:{config.NumLayers})");
            if (options.PromptTokens + options.NewTokens > config.MaxPositionEmbeddings)
                throw new CliException($"--prompt + --new = {options.PromptTokens + options.NewTokens} tokens, more than the model's {config.MaxPositionEmbeddings} positions");
            var weightDtype = Cli.WeightDtype(pr, dtype, config);
            var result = Measure(source.Directory, start, end, wholeModel: span is null, weightDtype, format, options);
            var run = new Run(source.SwarmName ?? source.Directory, start, end, span is null, Cli.DtypeName(weightDtype), format.Name(), options);
            if (pr.GetValue(json)) WriteJson(run, result);
            else WriteTable(run, result);
            return 0;
        });
        return cmd;
    }

    /// <summary>What was benched, echoed next to the numbers.</summary>
    sealed record Run(string Model, int Start, int End, bool WholeModel, string Dtype, string Quant, EngineBenchOptions Options);

    /// <summary>Loads the span (and the ends for the whole model) and benches it, with progress bars when stderr is a terminal.</summary>
    static EngineBenchResult Measure(string dir, int start, int end, bool wholeModel, ScalarType dtype, QuantFormat quant, EngineBenchOptions options)
    {
        if (Console.IsErrorRedirected) return LoadAndRun(dir, start, end, wholeModel, dtype, quant, options, null, null);
        EngineBenchResult? result = null;
        AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) }).Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(ctx =>
            {
                var load = ctx.AddTask($"loading blocks {start}:{end}", maxValue: end - start);
                var bench = ctx.AddTask("warm-up", autoStart: false);
                result = LoadAndRun(dir, start, end, wholeModel, dtype, quant, options,
                    new SyncProgress<int>(done => load.Value = done),
                    new SyncProgress<BenchProgress>(p =>
                    {
                        if (!bench.IsStarted) bench.StartTask();
                        bench.MaxValue = p.Total;
                        bench.Value = p.Done;
                        bench.Description = p.Phase;
                    }));
                load.Value = load.MaxValue;
                bench.Value = bench.MaxValue;
            });
        return result!;
    }

    static EngineBenchResult LoadAndRun(string dir, int start, int end, bool wholeModel, ScalarType dtype, QuantFormat quant, EngineBenchOptions options,
        IProgress<int>? loading, IProgress<BenchProgress>? benching)
    {
        LocalBlockStack stack;
        ModelEnds? ends;
        // As CausalLM.Load does: the checkpoint's files are closed once the weights are loaded.
        using (var checkpoint = Checkpoint.Open(dir))
        {
            stack = checkpoint.LoadBlocks(start, end, dtype, progress: loading, quant: quant);
            ends = wholeModel ? checkpoint.LoadEnds(dtype, quant: quant) : null;
        }
        using (stack)
        using (ends)
            return EngineBench.Run(stack, ends, options, benching);
    }

    static void WriteJson(Run run, EngineBenchResult r)
    {
        using var stdout = Console.OpenStandardOutput();
        using (var w = new Utf8JsonWriter(stdout))
        {
            w.WriteStartObject();
            // The first seven names are a contract that tools outside this repository read.
            w.WriteNumber("prefill_tok_s", r.PrefillTokensPerSecond);
            w.WriteNumber("decode_tok_s", r.DecodeTokensPerSecond);
            w.WriteNumber("weight_bytes_per_token", r.WeightBytesPerToken);
            w.WriteNumber("bandwidth_bytes_s", r.Bandwidth.Best);
            w.WriteString("dtype", run.Dtype);
            w.WriteNumber("threads", r.Threads);
            w.WriteNumber("peak_rss_bytes", r.PeakRssBytes);
            w.WriteString("quant", run.Quant);
            w.WriteNumber("decode_read_fraction", r.DecodeReadFraction);
            w.WriteNumber("weight_bytes", r.WeightBytes);
            w.WriteString("model", run.Model);
            w.WriteString("blocks", $"{run.Start}:{run.End}");
            w.WriteBoolean("whole_model", run.WholeModel);
            w.WriteNumber("prompt", run.Options.PromptTokens);
            w.WriteNumber("new", run.Options.NewTokens);
            w.WriteNumber("repeats", run.Options.Repeats);
            w.WriteEndObject();
        }
        stdout.WriteByte((byte)'\n');
    }

    static void WriteTable(Run run, EngineBenchResult r)
    {
        var o = run.Options;
        var table = new Table().AddColumn("").AddColumn("");
        table.HideHeaders();
        void Row(string name, string value) => table.AddRow(Markup.Escape(name), Markup.Escape(value));
        Row("model", run.Model);
        Row("blocks", run.WholeModel ? $"{run.Start}:{run.End} (whole model, with final norm and LM head)" : $"{run.Start}:{run.End}");
        Row("weights", run.Quant == "none" ? $"{run.Dtype}, {Mb(r.WeightBytes)} held" : $"{run.Quant} (norms and biases {run.Dtype}), {Mb(r.WeightBytes)} held");
        Row("prefill", $"{r.PrefillTokensPerSecond:F1} tok/s ({o.PromptTokens}-token prompt, median of {o.Repeats})");
        Row("decode", $"{r.DecodeTokensPerSecond:F2} tok/s ({o.NewTokens} cached steps, median of {o.Repeats})");
        Row("weight bytes per token", Mb(r.WeightBytesPerToken));
        Row("decode read rate", $"{r.WeightBytesPerToken * r.DecodeTokensPerSecond / 1e9:F2} GB/s = {r.DecodeReadFraction:F2} of the bandwidth");
        Row("memory bandwidth", $"{r.Bandwidth.Best / 1e9:F2} GB/s (torch sum {r.Bandwidth.TorchSum / 1e9:F2}, C# read {r.Bandwidth.HostRead / 1e9:F2})");
        Row("peak RSS", Mb(r.PeakRssBytes));
        Row("threads", r.Threads.ToString(System.Globalization.CultureInfo.InvariantCulture));
        AnsiConsole.Write(table);
    }

    static string Mb(long bytes) => $"{bytes / 1e6:F1} MB";

    /// <summary>Reports on the caller's thread: <see cref="Progress{T}"/> would post to the thread pool and lag.</summary>
    sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}
