using System.CommandLine;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using Spectre.Console;

namespace PetalsSharp.Cli.Commands;

/// <summary><c>petals demo</c>: the main job on a built-in tiny random model, or on <c>--model DIR</c>.</summary>
public static class DemoCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption(required: false);
        model.Description = "Use this checkpoint folder instead of the built-in random-weight model";
        var prompt = new Option<string>("--prompt", "-p") { Description = "Prompt", DefaultValueFactory = _ => "Once upon a time" };
        var maxNew = new Option<int>("--max-new-tokens", "-n") { Description = "Tokens to generate", DefaultValueFactory = _ => 24 };
        var cmd = new Command("demo", "Generate from a small built-in model (random weights) to show the whole pipeline.\n\nExamples:\n  petals demo\n  petals demo --model ./stories260K --prompt \"Once upon a time\"")
        {
            model, prompt, maxNew,
        };
        cmd.SetAction(async (pr, ct) =>
        {
            var dir = pr.GetValue(model);
            if (dir is null)
            {
                dir = EnsureBuiltInModel();
                AnsiConsole.MarkupLine("[yellow]The built-in demo model has RANDOM weights: expect gibberish. Pass --model DIR for a real checkpoint.[/]");
            }
            using var lm = await ModelOpener.OpenAsync(dir, TorchSharp.torch.ScalarType.Float32, ct: ct);
            AnsiConsole.MarkupLine($"model: [bold]{Markup.Escape(dir)}[/] ({lm.Config.ModelType}, {lm.Config.NumLayers} blocks, hidden {lm.Config.HiddenSize})");
            var text = pr.GetValue(prompt)!;
            var options = new GenerationOptions { MaxNewTokens = pr.GetValue(maxNew), DoSample = false };
            var started = DateTime.UtcNow;
            int tokens = 0;
            Console.Write(text);
            await foreach (var step in lm.StreamAsync([text], options, ct))
            {
                Console.Write(step.TextDeltas[0]);
                tokens++;
            }
            Console.WriteLine();
            var seconds = (DateTime.UtcNow - started).TotalSeconds;
            AnsiConsole.MarkupLine($"[grey]{tokens} tokens in {seconds:F2} s ({tokens / Math.Max(seconds, 1e-9):F1} tok/s), greedy[/]");
            return 0;
        });
        return cmd;
    }

    /// <summary>Creates the demo checkpoint once under the user's cache folder and reuses it afterwards.</summary>
    public static string EnsureBuiltInModel()
    {
        var root = Environment.GetEnvironmentVariable("PETALS_CACHE")
                   ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "petals-sharp");
        var dir = Path.Combine(root, "demo-llama-v1");
        if (File.Exists(Path.Combine(dir, "model.safetensors")) && File.Exists(Path.Combine(dir, "tokenizer.json"))) return dir;
        var tmp = dir + ".tmp-" + Environment.ProcessId;
        var config = CreateModelCommand.BuildConfig("llama", hidden: 128, layers: 6, heads: 4, kvHeads: 2, intermediate: 352,
            vocab: 50257, maxPositions: 1024, tie: true);
        AnsiConsole.MarkupLine($"creating the built-in demo model in {Markup.Escape(dir)} ...");
        CreateModelCommand.Write(config, tmp, seed: 7, TorchSharp.torch.ScalarType.Float32, quiet: true);
        try { Directory.Move(tmp, dir); }
        catch (IOException) when (Directory.Exists(dir)) { Directory.Delete(tmp, recursive: true); }
        return dir;
    }
}
