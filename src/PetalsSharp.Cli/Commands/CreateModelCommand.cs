using System.CommandLine;
using PetalsSharp.Models;
using PetalsSharp.Text;
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
        var seed = new Option<int>("--seed") { Description = "Seed of the random weights", DefaultValueFactory = _ => 0 };
        var dtype = Cli.DtypeOption();
        dtype.Description = "dtype written to model.safetensors: f32 (default), bf16 or f16";
        var output = new Option<string>("--out", "-o") { Description = "Output folder", Required = true };
        var cmd = new Command("create-model", "Write a random-weight Hugging Face checkpoint (config.json, model.safetensors, tokenizer.json).\n\nExample:\n  petals create-model --family llama --hidden-size 768 --layers 12 --heads 12 --kv-heads 4 --intermediate-size 2048 --vocab-size 32000 --seed 1 --out ./m100")
        {
            family, hidden, layers, heads, kvHeads, intermediate, vocab, maxPos, tie, seed, dtype, output,
        };
        cmd.SetAction(pr =>
        {
            var config = BuildConfig(pr.GetValue(family)!, pr.GetValue(hidden), pr.GetValue(layers), pr.GetValue(heads),
                pr.GetValue(kvHeads), pr.GetValue(intermediate), pr.GetValue(vocab), pr.GetValue(maxPos), pr.GetValue(tie));
            var outDir = pr.GetValue(output)!;
            Write(config, outDir, pr.GetValue(seed), Cli.ParseDtype(pr.GetValue(dtype)!), quiet: false);
            return 0;
        });
        return cmd;
    }

    public static ModelConfig BuildConfig(string family, int hidden, int layers, int heads, int? kvHeads, int? intermediate,
        int vocab, int maxPositions, bool tie)
    {
        if (hidden <= 0 || layers <= 0 || heads <= 0) throw new CliException("--hidden-size, --layers and --heads must be positive");
        if (hidden % heads != 0) throw new CliException($"--hidden-size {hidden} must be a multiple of --heads {heads}");
        if (vocab < 257) throw new CliException($"--vocab-size must be at least 257 (got {vocab})");
        int kv = kvHeads ?? heads;
        if (kv <= 0 || heads % kv != 0) throw new CliException($"--heads {heads} must be a multiple of --kv-heads {kv}");
        var f = ModelFamilies.Find(family) ?? throw new CliException($"unknown --family '{family}' (known: {string.Join(", ", ModelFamilies.FamilyNames)})");
        return f.CreateConfig(new ModelShape(hidden, layers, heads, kv, intermediate, vocab, maxPositions, tie));
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
