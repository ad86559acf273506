using System.CommandLine;
using System.Text.Json;
using PetalsSharp.Generation;
using PetalsSharp.Models;

namespace PetalsSharp.Cli.Commands;

/// <summary><c>petals generate</c>: stream text from a prompt, or print token ids as JSON.</summary>
public static class GenerateCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption();
        var dtype = Cli.DtypeOption();
        var quant = Cli.QuantOption("the weights this command runs (every block and the embeddings/head locally; with --peers or --initial-peers only the client's embeddings and head)");
        var prompt = new Option<string[]>("--prompt", "-p") { Description = "Prompt text (repeat for a batch)", AllowMultipleArgumentsPerToken = false };
        var inputIds = new Option<string>("--input-ids") { Description = "Token ids, rows split by ';' (no BOS is added): \"1,2,3;4,5,6\"" };
        var maxNew = new Option<int>("--max-new-tokens", "-n") { Description = "Tokens to generate", DefaultValueFactory = _ => 32 };
        var temperature = new Option<double>("--temperature") { Description = "Sampling temperature", DefaultValueFactory = _ => 1.0 };
        var topK = new Option<int>("--top-k") { Description = "Keep the K most likely tokens (0 = off)" };
        var topP = new Option<double>("--top-p") { Description = "Nucleus sampling mass (1 = off)", DefaultValueFactory = _ => 1.0 };
        var repetition = new Option<double>("--repetition-penalty") { Description = "Repetition penalty (1 = off)", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<int?>("--seed") { Description = "Seed for reproducible sampling" };
        var greedy = new Option<bool>("--greedy") { Description = "Pick the most likely token at every step" };
        var stop = new Option<string[]>("--stop") { Description = "Stop when the text contains this string (repeatable)" };
        var ignoreEos = new Option<bool>("--ignore-eos") { Description = "Do not stop at the end-of-sequence token" };
        var numBeams = new Option<int>("--num-beams") { Description = "Beam search with this many beams (one prompt; greedy scores)", DefaultValueFactory = _ => 1 };
        var lengthPenalty = new Option<double>("--length-penalty") { Description = "Beam search: divide a finished beam's log-probability by length^this", DefaultValueFactory = _ => 1.0 };
        var earlyStopping = new Option<bool>("--early-stopping") { Description = "Beam search: stop as soon as --num-beams beams have finished" };
        var remote = new ModelOpener.RemoteOptionSet();
        var tuned = new Option<string>("--tuned") { Description = "Generate with parameters trained by 'petals finetune' (.safetensors)" };
        var json = new Option<bool>("--json") { Description = "Print {\"sequences\": [[...]], \"new_tokens\": [[...]]} instead of text" };
        var cmd = new Command("generate", "Generate text (or token ids) from a model.\n\nExamples:\n  petals generate -m ./my-model -p \"Once upon a time\" -n 40\n  petals generate -m ./my-model --input-ids \"1,2,3;4,5,6\" -n 12 --greedy --json\n  petals generate -m ./my-model --peers 127.0.0.1:31330,127.0.0.1:31331 -p \"Hello\"")
        {
            model, dtype, quant, prompt, inputIds, maxNew, temperature, topK, topP, repetition, seed, greedy, stop, ignoreEos, tuned, json,
            numBeams, lengthPenalty, earlyStopping,
        };
        remote.AddTo(cmd);
        var draft = new DraftOptionSet();
        draft.AddTo(cmd);
        cmd.SetAction(async (pr, ct) =>
        {
            var prompts = pr.GetValue(prompt) ?? [];
            var ids = pr.GetValue(inputIds);
            if ((prompts.Length == 0) == (ids is null)) throw new CliException("give either --prompt or --input-ids");
            bool speculative = draft.Requested(pr);
            var options = new GenerationOptions
            {
                MaxNewTokens = pr.GetValue(maxNew),
                DoSample = !pr.GetValue(greedy),
                Temperature = pr.GetValue(temperature),
                TopK = pr.GetValue(topK),
                TopP = pr.GetValue(topP),
                RepetitionPenalty = pr.GetValue(repetition),
                Seed = pr.GetValue(seed),
                StopStrings = pr.GetValue(stop) ?? [],
                IgnoreEos = pr.GetValue(ignoreEos),
                NumBeams = pr.GetValue(numBeams),
                LengthPenalty = pr.GetValue(lengthPenalty),
                EarlyStopping = pr.GetValue(earlyStopping),
            };
            if (options.NumBeams > 1 && !pr.GetValue(greedy)) throw new CliException("--num-beams scores beams greedily: add --greedy");
            var tunedPath = pr.GetValue(tuned);
            if (tunedPath is not null && !File.Exists(tunedPath)) throw new CliException($"--tuned: file not found: {tunedPath}");
            using var lm = await ModelOpener.OpenAsync(pr.GetValue(model)!, Cli.ParseDtypeOrDefault(pr.GetValue(dtype)),
                remote.Read(pr), ct, Cli.ParseQuant(pr.GetValue(quant)));
            using var tunedModel = tunedPath is null ? null : Training.TunedFile.Load(lm, tunedPath);
            if (tunedModel is not null) options = options with { Tuning = tunedModel.ForGeneration() };
            IReadOnlyList<IReadOnlyList<int>> rows = ids is not null
                ? Cli.ParseInputIds(ids)
                : prompts.Select(p => (IReadOnlyList<int>)(lm.Tokenizer ?? throw new CliException("the model folder has no tokenizer; use --input-ids")).Encode(p).ToArray()).ToList();
            using var draftLm = speculative ? await draft.LoadModelAsync(pr, lm, ct) : null;
            if (speculative)
            {
                if (rows.Count != 1) throw new CliException("speculative decoding (--draft, --draft-model) takes one prompt at a time");
                options = options with { Speculative = draft.Options(pr, draftLm) };
            }
            await using var _ = options.Speculative?.Draft;
            if (pr.GetValue(json)) return await PrintJsonAsync(lm, rows, options, ct);
            return await StreamTextAsync(lm, rows, prompts, options, ct);
        });
        return cmd;
    }

    static async Task<int> PrintJsonAsync(CausalLM lm, IReadOnlyList<IReadOnlyList<int>> rows, GenerationOptions options, CancellationToken ct)
    {
        var result = await lm.GenerateAsync(rows, options, ct);
        using var stdout = Console.OpenStandardOutput();
        using var w = new Utf8JsonWriter(stdout);
        w.WriteStartObject();
        WriteRows(w, "sequences", result.Sequences);
        WriteRows(w, "new_tokens", result.NewTokens);
        if (result.Speculation is { } spec)
        {
            w.WriteStartObject("speculation");
            w.WriteNumber("steps", spec.Steps);
            w.WriteNumber("proposed", spec.Proposed);
            w.WriteNumber("accepted", spec.Accepted);
            w.WriteEndObject();
        }
        if (lm.Blocks is Client.RemoteSequential remote)
        {
            // What activation checks (--verify-rate) did for this run.
            var v = remote.Verification;
            w.WriteStartObject("verification");
            w.WriteNumber("checks", v.Checks);
            w.WriteNumber("unverifiable", v.Unverifiable);
            w.WriteNumber("mismatches", v.Mismatches);
            w.WriteNumber("banned", v.Banned);
            w.WriteEndObject();
        }
        w.WriteEndObject();
        w.Flush();
        stdout.WriteByte((byte)'\n');
        return 0;
    }

    static void WriteRows(Utf8JsonWriter w, string name, IReadOnlyList<IReadOnlyList<int>> rows)
    {
        w.WriteStartArray(name);
        foreach (var row in rows)
        {
            w.WriteStartArray();
            foreach (var id in row) w.WriteNumberValue(id);
            w.WriteEndArray();
        }
        w.WriteEndArray();
    }

    static async Task<int> StreamTextAsync(CausalLM lm, IReadOnlyList<IReadOnlyList<int>> rows, string[] prompts,
        GenerationOptions options, CancellationToken ct)
    {
        if (lm.Tokenizer is null)
        {
            var result = await lm.GenerateAsync(rows, options, ct);
            foreach (var r in result.NewTokens) Console.WriteLine(string.Join(",", r));
            return 0;
        }
        if (rows.Count == 1)
        {
            Console.Write(prompts.Length > 0 ? prompts[0] : lm.Tokenizer.Decode(rows[0]));
            await foreach (var step in lm.StreamAsync(rows, options, ct)) Console.Write(step.TextDeltas[0]);
            Console.WriteLine();
            return 0;
        }
        var all = await lm.GenerateAsync(rows, options, ct);
        for (int b = 0; b < rows.Count; b++)
            Console.WriteLine($"[{b}] {(prompts.Length > b ? prompts[b] : lm.Tokenizer.Decode(rows[b]))}{all.Texts[b]}");
        return 0;
    }
}
