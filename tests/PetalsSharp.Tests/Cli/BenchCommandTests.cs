using System.Text.Json;
using Xunit;

namespace PetalsSharp.Tests.Cli;

/// <summary><c>petals bench</c> through the real executable: its JSON contract and its one-line errors.</summary>
[Trait("Category", "Processes")]
public sealed class BenchCommandTests
{
    static readonly string Fixture = TestData.Path("llama-gqa");

    // Small enough to finish in seconds: numbers are checked for sense, never for speed.
    static readonly string[] Quick = ["--prompt", "8", "--new", "4", "--repeats", "1", "--json"];

    static async Task<JsonElement> BenchJsonAsync(params string[] args)
    {
        var res = await CliRunner.RunAsync(["bench", "--model", Fixture, .. Quick, .. args]);
        Assert.True(res.ExitCode == 0, res.Stderr);
        using var doc = JsonDocument.Parse(res.Stdout);   // exactly one JSON value, or this throws
        Assert.Equal(JsonValueKind.Object, doc.RootElement.ValueKind);
        return doc.RootElement.Clone();
    }

    static void AssertContractFields(JsonElement json, string dtype)
    {
        Assert.True(json.GetProperty("prefill_tok_s").GetDouble() > 0);
        Assert.True(json.GetProperty("decode_tok_s").GetDouble() > 0);
        Assert.True(json.GetProperty("weight_bytes_per_token").GetInt64() > 0);
        Assert.True(json.GetProperty("bandwidth_bytes_s").GetDouble() > 0);
        Assert.Equal(dtype, json.GetProperty("dtype").GetString());
        Assert.True(json.GetProperty("threads").GetInt32() >= 1);
        Assert.True(json.GetProperty("peak_rss_bytes").GetInt64() > 0);
        Assert.True(json.GetProperty("decode_read_fraction").GetDouble() > 0);
        Assert.True(json.TryGetProperty("quant", out _), "bench --json has \"quant\"");
    }

    [Fact]
    public async Task Json_of_the_whole_model_has_every_contract_field()
    {
        var json = await BenchJsonAsync();

        AssertContractFields(json, "f32");
        Assert.Equal("none", json.GetProperty("quant").GetString());
        Assert.Equal("0:3", json.GetProperty("blocks").GetString());
        Assert.True(json.GetProperty("whole_model").GetBoolean());
        Assert.Equal(8, json.GetProperty("prompt").GetInt32());
        Assert.Equal(4, json.GetProperty("new").GetInt32());
        Assert.Equal(1, json.GetProperty("repeats").GetInt32());
        // A decoded token reads every weight but the embeddings (untied f32 [320, 64]).
        Assert.Equal(json.GetProperty("weight_bytes").GetInt64() - 320 * 64 * 4, json.GetProperty("weight_bytes_per_token").GetInt64());
    }

    [Fact]
    public async Task Json_of_a_span_in_bf16_echoes_the_span_and_the_dtype()
    {
        var json = await BenchJsonAsync("--blocks", "1:3", "--dtype", "bf16");

        AssertContractFields(json, "bf16");
        Assert.Equal("1:3", json.GetProperty("blocks").GetString());
        Assert.False(json.GetProperty("whole_model").GetBoolean());
        // Only the span's blocks: no head, no embeddings.
        Assert.Equal(json.GetProperty("weight_bytes").GetInt64(), json.GetProperty("weight_bytes_per_token").GetInt64());
    }

    [Theory]
    [InlineData("int8", 34.0 / 32)]
    [InlineData("nf4", 34.0 / 64)]
    public async Task Json_of_a_quantized_model_names_the_format_and_reads_its_packed_bytes(string quant, double bytesPerWeight)
    {
        var exact = await BenchJsonAsync();
        var json = await BenchJsonAsync("--quant", quant);

        AssertContractFields(json, "f32");
        Assert.Equal(quant, json.GetProperty("quant").GetString());
        // Every matrix (block linears, head, embeddings) is packed; only norms stay f32, so a token reads about
        // bytesPerWeight / 4 of the f32 bytes (hidden 64 is a whole number of blocks for both formats).
        double ratio = json.GetProperty("weight_bytes_per_token").GetDouble() / exact.GetProperty("weight_bytes_per_token").GetDouble();
        Assert.InRange(ratio, bytesPerWeight / 4 * 0.95, bytesPerWeight / 4 * 1.1);
    }

    [Theory]
    [InlineData("missing-model", "model folder not found")]
    [InlineData("bad-quant", "--quant: unknown quantization 'int3' (none, int8 or nf4)")]
    [InlineData("empty-folder", "config.json")]
    [InlineData("reversed-span", "need 0 ≤ START < END")]
    [InlineData("span-past-the-end", "outside the model: it has 3 blocks")]
    [InlineData("no-new-tokens", "--new must be at least 1")]
    [InlineData("no-prompt", "--prompt must be at least 1")]
    [InlineData("bad-dtype", "--dtype must be f32, bf16 or f16")]
    public async Task Bad_input_gets_one_line_and_a_nonzero_exit(string scenario, string expected)
    {
        string[] args = scenario switch
        {
            "missing-model" => ["bench", "--model", "/nonexistent/model"],
            "empty-folder" => ["bench", "--model", Directory.CreateTempSubdirectory("petals-bench-empty").FullName],
            "reversed-span" => ["bench", "--model", Fixture, "--blocks", "5:3"],
            "span-past-the-end" => ["bench", "--model", Fixture, "--blocks", "0:99"],
            "no-new-tokens" => ["bench", "--model", Fixture, "--new", "0"],
            "no-prompt" => ["bench", "--model", Fixture, "--prompt", "0"],
            "bad-dtype" => ["bench", "--model", Fixture, "--dtype", "int3"],
            "bad-quant" => ["bench", "--model", Fixture, "--quant", "int3"],
            _ => throw new ArgumentException(scenario),
        };
        var res = await CliRunner.RunAsync(args);
        Assert.NotEqual(0, res.ExitCode);
        Assert.Contains(expected, res.Stderr);
        Assert.Single(res.Stderr.Trim().Split('\n'));
        Assert.DoesNotContain("   at ", res.Stderr);
        Assert.Equal("", res.Stdout);
    }
}
