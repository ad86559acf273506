using System.CommandLine;
using PetalsSharp.Models;
using static TorchSharp.torch;

namespace PetalsSharp.Cli;

/// <summary>What every command shares: error reporting, common options and argument parsing.</summary>
public static class Cli
{
    /// <summary>Runs the parsed command; any failure becomes one line on stderr and exit code 1.</summary>
    public static async Task<int> InvokeAsync(RootCommand root, string[] args)
    {
        var parse = root.Parse(args);
        try
        {
            return await parse.InvokeAsync(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine("error: cancelled");
            return 130;
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"error: {Describe(e)}");
            if (Environment.GetEnvironmentVariable("PETALS_DEBUG") == "1") Console.Error.WriteLine(e);
            return 1;
        }
    }

    internal static string Describe(Exception e)
    {
        while (e is AggregateException { InnerException: { } inner }) e = inner;
        if (e is Grpc.Core.RpcException rpc) return $"server answered {rpc.StatusCode}: {rpc.Status.Detail}".ReplaceLineEndings(" ");
        var message = e.Message.ReplaceLineEndings(" ");
        return e is ConfigException or Models.Weights.CheckpointException or ArgumentException or CliException
            or FileNotFoundException or DirectoryNotFoundException or InvalidOperationException or FormatException
            or InvalidDataException or NotSupportedException or Swarm.SwarmException or Hub.HubException or Text.Templates.ChatTemplateException
            or Models.Lora.LoraException
            ? message
            : $"{e.GetType().Name}: {message}";
    }

    public static Option<string> ModelOption(bool required = true) => new("--model", "-m")
    {
        Description = "Hugging Face model folder (config.json, *.safetensors, tokenizer), or a hub model ORG/NAME[@REVISION] (downloaded to the HF cache)",
        Required = required,
    };

    public static Option<string?> DtypeOption() => new("--dtype")
    {
        Description = "How weights are stored in memory: f32, bf16 or f16 (default: the checkpoint's torch_dtype in config.json, " +
            "f32 when it has none). Compute is f32 on CPU.",
    };

    public static Option<string> QuantOption(string what) => new("--quant")
    {
        Description = $"Quantize {what} at load: none (default, exact), int8 (8.5 bits a weight, 32-value blocks) or nf4 " +
            "(4.25 bits, NF4 code book in 64-value blocks); see docs/quantization.md",
        DefaultValueFactory = _ => "none",
    };

    /// <summary>The block format <c>--quant</c> names, or a one-line CLI error.</summary>
    public static PetalsSharp.Models.Quant.QuantFormat ParseQuant(string? value)
    {
        try { return PetalsSharp.Models.Quant.QuantFormats.Parse(value ?? "none"); }
        catch (ArgumentException e) { throw new CliException($"--quant: {e.Message}"); }
    }

    /// <summary>An explicit <c>--dtype</c>, or null to take the checkpoint's (see <see cref="ResolveDtype"/>).</summary>
    public static ScalarType? ParseDtypeOrDefault(string? value) => value is null ? null : ParseDtype(value);

    /// <summary>The dtype to hold a model's weights in: the one asked for, else the checkpoint's <c>torch_dtype</c>.</summary>
    public static ScalarType ResolveDtype(ScalarType? requested, string modelDir) =>
        requested ?? ModelConfigLoader.Load(modelDir).CheckpointDtype;

    public static ScalarType ParseDtype(string value, string option = "--dtype") => value.ToLowerInvariant() switch
    {
        "f32" or "float32" or "fp32" => ScalarType.Float32,
        "bf16" or "bfloat16" => ScalarType.BFloat16,
        "f16" or "float16" or "fp16" => ScalarType.Float16,
        _ => throw new CliException($"{option} must be f32, bf16 or f16 (got '{value}')"),
    };

    /// <summary>The dtype a command stores <paramref name="config"/>'s weights in: <c>--dtype</c> when given, else the checkpoint's <c>torch_dtype</c>.</summary>
    public static ScalarType WeightDtype(ParseResult pr, Option<string?> dtype, ModelConfig config) =>
        ParseDtypeOrDefault(pr.GetValue(dtype)) ?? config.CheckpointDtype;

    /// <summary>The short name <c>--dtype</c> takes: f32, bf16 or f16.</summary>
    public static string DtypeName(ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => "f32",
        ScalarType.BFloat16 => "bf16",
        ScalarType.Float16 => "f16",
        _ => dtype.ToString().ToLowerInvariant(),
    };

    /// <summary>Splits a comma-separated option value; null or blank gives an empty list.</summary>
    public static IReadOnlyList<string> SplitList(string? value) =>
        string.IsNullOrWhiteSpace(value) ? [] : value.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);

    /// <summary>Loads <c>--swarm-key FILE</c>, or null for a public swarm.</summary>
    public static Dht.SwarmKey? LoadSwarmKey(string? path) => path is null ? null : Dht.SwarmKey.Load(path);

    /// <summary>The value of a <c>--join-timeout</c> option, in seconds.</summary>
    public static TimeSpan JoinTimeout(double seconds) =>
        double.IsFinite(seconds) && seconds is >= 0 and <= 86400 ? TimeSpan.FromSeconds(seconds)
            : throw new CliException($"--join-timeout must be between 0 and 86400 seconds, not {seconds}");

    /// <summary>Parses <c>"1,2,3;4,5,6"</c>: rows split by ';', ids by ','.</summary>
    public static List<IReadOnlyList<int>> ParseInputIds(string text)
    {
        var rows = new List<IReadOnlyList<int>>();
        foreach (var row in text.Split(';'))
        {
            var ids = new List<int>();
            foreach (var part in row.Split(',', StringSplitOptions.TrimEntries))
            {
                if (!int.TryParse(part, out var id) || id < 0)
                    throw new CliException($"--input-ids: '{part}' is not a non-negative token id (format: \"1,2,3;4,5,6\")");
                ids.Add(id);
            }
            rows.Add(ids);
        }
        return rows;
    }

    /// <summary>Left-pads rows to one length for a cache-free forward; returns the padding per row.</summary>
    public static (Tensor Ids, int[] LeftPadding) ToTensor(IReadOnlyList<IReadOnlyList<int>> rows, int padId)
    {
        int width = rows.Max(r => r.Count);
        var data = new long[rows.Count * width];
        var pad = new int[rows.Count];
        for (int b = 0; b < rows.Count; b++)
        {
            pad[b] = width - rows[b].Count;
            for (int t = 0; t < width; t++) data[b * width + t] = t < pad[b] ? padId : rows[b][t - pad[b]];
        }
        return (tensor(data, [rows.Count, width]), pad);
    }
}

/// <summary>A user error: printed as one line without the exception type.</summary>
public sealed class CliException(string message) : Exception(message);
