using System.CommandLine;
using System.Text.Json;
using PetalsSharp.Models;
using Spectre.Console;
using static TorchSharp.torch;

namespace PetalsSharp.Cli.Commands;

/// <summary><c>petals inspect</c>: logits and every hidden state of one forward pass.</summary>
public static class InspectCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption();
        var dtype = Cli.DtypeOption();
        var quant = Cli.QuantOption("the weights this command runs (every block and the embeddings/head locally; with --peers or --initial-peers only the client's embeddings and head)");
        var inputIds = new Option<string>("--input-ids") { Description = "Token ids, rows split by ';': \"1,2,3;4,5,6\"", Required = true };
        var json = new Option<bool>("--json") { Description = "Print {\"logits\": [B][T][V], \"hidden_states\": [L+1][B][T][H]}" };
        var remote = new ModelOpener.RemoteOptionSet();
        var cmd = new Command("inspect", "Run one forward pass and show logits and hidden states (HF output_hidden_states layout).\n\nExample:\n  petals inspect -m ./my-model --input-ids \"1,2,3;4,5,6\" --json")
        {
            model, dtype, quant, inputIds, json,
        };
        remote.AddTo(cmd);
        cmd.SetAction(async (pr, ct) =>
        {
            var rows = Cli.ParseInputIds(pr.GetValue(inputIds)!);
            using var lm = await ModelOpener.OpenAsync(pr.GetValue(model)!, Cli.ParseDtypeOrDefault(pr.GetValue(dtype)),
                remote.Read(pr), ct, Cli.ParseQuant(pr.GetValue(quant)));
            var (ids, pad) = Cli.ToTensor(rows, lm.Config.PadTokenId ?? 0);
            using var result = lm.Inspect(ids, pad.Any(p => p > 0) ? pad : null);
            if (pr.GetValue(json)) WriteJson(result);
            else WriteSummary(lm, result);
            return 0;
        });
        return cmd;
    }

    static void WriteJson(InspectResult result)
    {
        using var stdout = Console.OpenStandardOutput();
        using (var w = new Utf8JsonWriter(stdout))
        {
            w.WriteStartObject();
            w.WritePropertyName("logits");
            WriteTensor(w, result.Logits);
            w.WriteStartArray("hidden_states");
            foreach (var h in result.HiddenStates)
                if (h is null) w.WriteNullValue();
                else WriteTensor(w, h);
            w.WriteEndArray();
            w.WriteEndObject();
        }
        stdout.WriteByte((byte)'\n');
    }

    /// <summary>Writes a float tensor as nested arrays; floats use the shortest text that reads back exactly.</summary>
    public static void WriteTensor(Utf8JsonWriter w, Tensor t)
    {
        using var c = t.detach().to(ScalarType.Float32).cpu().contiguous();
        var data = c.data<float>().ToArray();
        var shape = c.shape;
        int offset = 0;
        void Write(int dim)
        {
            w.WriteStartArray();
            if (dim == shape.Length - 1)
                for (long i = 0; i < shape[dim]; i++) w.WriteNumberValue(data[offset++]);
            else
                for (long i = 0; i < shape[dim]; i++) Write(dim + 1);
            w.WriteEndArray();
        }
        Write(0);
    }

    static void WriteSummary(CausalLM lm, InspectResult result)
    {
        var table = new Table().AddColumns("row", "position", "top tokens (logit)");
        var logits = result.Logits;
        for (int b = 0; b < logits.shape[0]; b++)
        {
            using var last = logits[b, -1];
            var (values, indices) = last.topk(5);
            var tops = indices.data<long>().ToArray().Zip(values.data<float>().ToArray(),
                (i, v) => $"{i}{(lm.Tokenizer?.TokenToString((int)i) is { } s ? $" '{Markup.Escape(s)}'" : "")} ({v:F3})");
            table.AddRow(b.ToString(), (logits.shape[1] - 1).ToString(), string.Join(", ", tops));
        }
        AnsiConsole.MarkupLine($"logits [{string.Join(", ", logits.shape)}], hidden_states {result.HiddenStates.Count} × [{string.Join(", ", result.HiddenStates[0]!.shape)}]");
        AnsiConsole.Write(table);
    }
}
