using System.CommandLine;
using PetalsSharp.Models;
using PetalsSharp.Text.Tokenizers;
using Spectre.Console;

namespace PetalsSharp.Cli.Commands;

/// <summary><c>petals create-model</c>: a random-weight HF checkpoint with an offline tokenizer.</summary>
public static class CreateModelCommand
{
    public static Command Create()
    {
        var family = new Option<string>("--family") { Description = "Model family: " + string.Join(", ", ModelFamilies.FamilyNames), DefaultValueFactory = _ => "llama" };
        family.AcceptOnlyFromAmong([.. ModelFamilies.FamilyNames]);
        var hidden = new Option<int>("--hidden-size") { Description = "Hidden size", DefaultValueFactory = _ => 64 };
        var layers = new Option<int>("--layers") { Description = "Number of blocks", DefaultValueFactory = _ => 4 };
        var heads = new Option<int>("--heads") { Description = "Attention heads", DefaultValueFactory = _ => 4 };
        var kvHeads = new Option<int?>("--kv-heads") { Description = "KV heads (default: --heads)" };
        var intermediate = new Option<int?>("--intermediate-size") { Description = "MLP size (default: the family's, e.g. about 8/3 × hidden for llama, 4 × hidden for falcon and bloom)" };
        var vocab = new Option<int>("--vocab-size") { Description = "Vocabulary size (GPT-2 tokenizer truncated to it; >= 257)", DefaultValueFactory = _ => 50257 };
        var maxPos = new Option<int>("--max-positions") { Description = "max_position_embeddings", DefaultValueFactory = _ => 2048 };
        var tie = new Option<bool>("--tie-embeddings") { Description = "Tie the LM head to the embeddings" };
        var set = new Option<string[]>("--set")
        {
            Description = "Override a config.json key: KEY=VALUE (JSON value or string), repeatable, e.g. --set num_local_experts=8",
            AllowMultipleArgumentsPerToken = false,
        };
        var seed = new Option<int>("--seed") { Description = "Seed of the random weights", DefaultValueFactory = _ => 0 };
        var dtype = Cli.DtypeOption();
        dtype.Description = "dtype written to model.safetensors (and config.json's torch_dtype): f32 (default), bf16 or f16";
        dtype.DefaultValueFactory = _ => "f32";
        var output = new Option<string>("--out", "-o") { Description = "Output folder", Required = true };
        var cmd = new Command("create-model", "Write a random-weight Hugging Face checkpoint (config.json, model.safetensors, tokenizer.json).\n\nExamples:\n  petals create-model --family llama --hidden-size 768 --layers 12 --heads 12 --kv-heads 4 --intermediate-size 2048 --vocab-size 32000 --seed 1 --out ./m100\n  petals create-model --family mixtral --hidden-size 256 --layers 4 --heads 8 --kv-heads 2 --set num_local_experts=8 --set sliding_window=4096 --out ./moe")
        {
            family, hidden, layers, heads, kvHeads, intermediate, vocab, maxPos, tie, set, seed, dtype, output,
        };
        cmd.SetAction(pr =>
        {
            var config = BuildConfig(pr.GetValue(family)!, pr.GetValue(hidden), pr.GetValue(layers), pr.GetValue(heads),
                pr.GetValue(kvHeads), pr.GetValue(intermediate), pr.GetValue(vocab), pr.GetValue(maxPos), pr.GetValue(tie),
                pr.GetValue(set));
            var outDir = pr.GetValue(output)!;
            Write(config, outDir, pr.GetValue(seed), Cli.ParseDtype(pr.GetValue(dtype)!), quiet: false);
            return 0;
        });
        return cmd;
    }

    /// <summary>
    /// A config of any registered family: the family fills in its own keys from the shape, then each
    /// <c>KEY=VALUE</c> override is applied to its config.json and the result is parsed and validated as a loaded
    /// checkpoint's would be.
    /// </summary>
    public static ModelConfig BuildConfig(string family, int hidden, int layers, int heads, int? kvHeads, int? intermediate,
        int vocab, int maxPositions, bool tie, IReadOnlyList<string>? overrides = null)
    {
        if (hidden <= 0 || layers <= 0 || heads <= 0) throw new CliException("--hidden-size, --layers and --heads must be positive");
        if (hidden % heads != 0) throw new CliException($"--hidden-size {hidden} must be a multiple of --heads {heads}");
        if (vocab < 257) throw new CliException($"--vocab-size must be at least 257 (got {vocab})");
        int kv = kvHeads ?? heads;
        if (kv <= 0 || heads % kv != 0) throw new CliException($"--heads {heads} must be a multiple of --kv-heads {kv}");
        if (intermediate is <= 0) throw new CliException($"--intermediate-size must be positive (got {intermediate})");
        var f = ModelFamilies.Find(family)
                ?? throw new CliException($"unknown --family '{family}' (known: {string.Join(", ", ModelFamilies.FamilyNames)})");
        ModelConfig config;
        try { config = f.CreateConfig(new ModelShape(hidden, layers, heads, kv, intermediate, vocab, maxPositions, tie)); }
        catch (NotSupportedException e) { throw new CliException(e.Message); }
        if (overrides is not { Count: > 0 }) return config;
        var json = config.ToHfJson();
        foreach (var o in overrides)
        {
            var eq = o.IndexOf('=');
            if (eq <= 0) throw new CliException($"--set expects KEY=VALUE (got '{o}')");
            json[o[..eq]] = ParseValue(o[(eq + 1)..]);
        }
        try { return ModelConfigLoader.Parse(json.ToJsonString(), "--set"); }
        catch (ConfigException e) { throw new CliException(e.Message); }
    }

    /// <summary>A JSON literal (number, true/false, null, array, object) as itself; anything else as a string.</summary>
    static System.Text.Json.Nodes.JsonNode? ParseValue(string text)
    {
        try { return System.Text.Json.Nodes.JsonNode.Parse(text); }
        catch (System.Text.Json.JsonException) { return System.Text.Json.Nodes.JsonValue.Create(text); }
    }

    /// <summary>Writes checkpoint and tokenizer, with a progress bar unless <paramref name="quiet"/>.</summary>
    public static void Write(ModelConfig config, string outDir, int seed, TorchSharp.torch.ScalarType dtype, bool quiet)
    {
        if (quiet || Console.IsErrorRedirected)
            RandomCheckpoint.Write(config, outDir, seed, dtype);
        else
            AnsiConsole.Progress().Start(ctx =>
            {
                var task = ctx.AddTask("writing random weights");
                RandomCheckpoint.Write(config, outDir, seed, dtype, new Progress<(int Done, int Total)>(p =>
                {
                    task.MaxValue = p.Total;
                    task.Value = p.Done;
                }));
            });
        Gpt2TokenizerFiles.Write(outDir, config.VocabSize);
        if (!quiet) Console.Error.WriteLine($"wrote {config.ModelType} checkpoint ({config.NumLayers} blocks, hidden {config.HiddenSize}, vocab {config.VocabSize}) to {outDir}");
    }
}
