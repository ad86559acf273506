using System.Text.Json;
using Xunit;

namespace PetalsSharp.Tests.Cli;

/// <summary>The CLI's JSON contracts and its one-line errors, through the real executable.</summary>
[Trait("Category", "Processes")]
public sealed class CliTests
{
    static readonly string Fixture = TestData.Path("llama-gqa");

    [Fact]
    public async Task Generate_json_gives_the_fixture_greedy_tokens()
    {
        using var r = Reference.Load("llama-gqa");
        var res = await CliRunner.RunAsync("generate", "--model", Fixture, "--input-ids", r.IdsArg("generation.prompt_ids"),
            "--max-new-tokens", "12", "--greedy", "--json");
        Assert.True(res.ExitCode == 0, res.Stderr);
        using var doc = JsonDocument.Parse(res.Stdout);
        Assert.Equal(r["generation.sequences"].GetRawText().Replace(" ", ""), doc.RootElement.GetProperty("sequences").GetRawText());
        Assert.Equal(r["generation.new_tokens"].GetRawText().Replace(" ", ""), doc.RootElement.GetProperty("new_tokens").GetRawText());
    }

    [Fact]
    public async Task Inspect_json_gives_logits_and_every_hidden_state()
    {
        using var r = Reference.Load("llama-gqa");
        var res = await CliRunner.RunAsync("inspect", "--model", Fixture, "--input-ids", r.IdsArg("input_ids"), "--json");
        Assert.True(res.ExitCode == 0, res.Stderr);
        using var doc = JsonDocument.Parse(res.Stdout);
        var logits = Reference.ToTensor(doc.RootElement.GetProperty("logits"), TorchSharp.torch.ScalarType.Float32);
        TensorAssert.Close(r.Floats("logits"), logits, 1e-3, 1e-4, "logits");
        var hidden = Reference.ToTensor(doc.RootElement.GetProperty("hidden_states"), TorchSharp.torch.ScalarType.Float32);
        TensorAssert.Close(r.Floats("hidden_states"), hidden, 1e-3, 1e-4, "hidden_states");
    }

    [Theory]
    [InlineData("missing-model", "model folder not found")]
    [InlineData("bad-ids", "is not a non-negative token id")]
    [InlineData("id-out-of-vocab", "outside the vocabulary")]
    [InlineData("bad-dtype", "--dtype must be f32, bf16 or f16")]
    [InlineData("bad-kv-dtype", "--kv-dtype must be f32, bf16 or f16")]
    [InlineData("bad-overcommit", "--cache-overcommit must be in [1, 100]")]
    [InlineData("no-input", "give either --prompt or --input-ids")]
    [InlineData("bad-top-p", "top_p must be in (0, 1]")]
    [InlineData("bad-draft", "--draft must be prompt-lookup")]
    [InlineData("draft-batch", "speculative decoding (--draft, --draft-model) takes one prompt at a time")]
    [InlineData("draft-vocab", "a draft needs the same tokenizer")]
    [InlineData("beams-sampled", "--num-beams scores beams greedily: add --greedy")]
    [InlineData("beams-batch", "beam search takes one prompt at a time")]
    [InlineData("bad-verify-rate", "--verify-rate must be between 0 and 1")]
    [InlineData("relay-without-swarm", "--reachability relay needs a swarm")]
    [InlineData("bad-reachability", "--reachability must be auto, direct or relay (got 'sometimes')")]
    [InlineData("relayed-relay", "a server reached through a relay cannot be a relay itself")]
    [InlineData("bad-relay-limit", "--relay-max-servers must be at least 1")]
    public async Task Bad_input_gets_one_line_and_a_nonzero_exit(string scenario, string expected)
    {
        string[] args = scenario switch
        {
            "missing-model" => ["generate", "--model", "/nonexistent/model", "--input-ids", "1,2"],
            "bad-ids" => ["generate", "--model", Fixture, "--input-ids", "1,x;3"],
            "id-out-of-vocab" => ["inspect", "--model", Fixture, "--input-ids", "1,99999", "--json"],
            "bad-dtype" => ["generate", "--model", Fixture, "--input-ids", "1,2", "--dtype", "int3"],
            "bad-kv-dtype" => ["server", "--model", Fixture, "--blocks", "0:2", "--port", "0", "--kv-dtype", "int8"],
            "bad-overcommit" => ["server", "--model", Fixture, "--blocks", "0:2", "--port", "0", "--cache-overcommit", "0.5"],
            "no-input" => ["generate", "--model", Fixture],
            "bad-top-p" => ["generate", "--model", Fixture, "--input-ids", "1,2", "--top-p", "0"],
            "bad-draft" => ["generate", "--model", Fixture, "--input-ids", "1,2", "--draft", "ngram"],
            "draft-batch" => ["generate", "--model", Fixture, "--input-ids", "1,2;3,4", "--draft", "prompt-lookup"],
            "draft-vocab" => ["generate", "--model", Fixture, "--input-ids", "1,2", "--draft-model", TestData.Path("bloom")],
            "beams-sampled" => ["generate", "--model", Fixture, "--input-ids", "1,2", "--num-beams", "2"],
            "beams-batch" => ["generate", "--model", Fixture, "--input-ids", "1,2;3,4", "--num-beams", "2", "--greedy"],
            "bad-verify-rate" => ["generate", "--model", Fixture, "--input-ids", "1,2", "--verify-rate", "2"],
            "relay-without-swarm" => ["server", "--model", Fixture, "--blocks", "0:2", "--port", "0", "--reachability", "relay"],
            "bad-reachability" => ["server", "--model", Fixture, "--blocks", "0:2", "--port", "0", "--reachability", "sometimes"],
            "relayed-relay" => ["server", "--model", Fixture, "--blocks", "0:2", "--port", "0", "--new-swarm", "--reachability", "relay", "--relay"],
            "bad-relay-limit" => ["dht", "--port", "0", "--relay", "--relay-max-servers", "0"],
            _ => throw new ArgumentException(scenario),
        };
        var res = await CliRunner.RunAsync(args);
        Assert.NotEqual(0, res.ExitCode);
        Assert.Contains(expected, res.Stderr);
        Assert.Single(res.Stderr.Trim().Split('\n'));
        Assert.DoesNotContain("   at ", res.Stderr);
    }

    /// <summary>A server refuses a config it cannot serve in one line that names what is unsupported, before it loads anything.</summary>
    [Theory]
    [InlineData("""{"model_type":"gemma2","hidden_size":64}""", "unsupported model_type 'gemma2' (supported: llama, mixtral, falcon, RefinedWeb, RefinedWebModel, bloom, mistral, qwen2)")]
    [InlineData("""{"model_type":"qwen2","hidden_size":64,"num_attention_heads":4,"num_hidden_layers":2,"use_sliding_window":true,"sliding_window":32,"max_window_layers":1}""",
        "use_sliding_window true is not supported for qwen2 (sliding-window attention on layers 1 and up, window 32)")]
    public async Task A_server_names_the_config_it_cannot_serve(string config, string expected)
    {
        var dir = Directory.CreateTempSubdirectory("petals-unservable").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "config.json"), config);
            var res = await CliRunner.RunAsync("server", "--model", dir, "--blocks", "0:1", "--port", "0");
            Assert.NotEqual(0, res.ExitCode);
            Assert.Contains(expected, res.Stderr);
            Assert.Single(res.Stderr.Trim().Split('\n'));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>Speculative decoding from the CLI gives plain greedy's tokens and reports its steps in <c>--json</c>.</summary>
    [Theory]
    [InlineData("--draft", "prompt-lookup")]
    [InlineData("--draft-model", "")]
    public async Task Generate_with_a_draft_gives_the_fixture_greedy_tokens(string option, string value)
    {
        using var r = Reference.Load("llama-gqa");
        var ids = r.IdsArg("generation.prompt_ids").Split(';')[0];
        var plain = await CliRunner.RunAsync("generate", "--model", Fixture, "--input-ids", ids, "--max-new-tokens", "12", "--greedy", "--ignore-eos", "--json");
        var drafted = await CliRunner.RunAsync("generate", "--model", Fixture, "--input-ids", ids, "--max-new-tokens", "12", "--greedy", "--ignore-eos", "--json",
            option, value.Length > 0 ? value : Fixture);
        Assert.True(plain.ExitCode == 0 && drafted.ExitCode == 0, plain.Stderr + drafted.Stderr);
        using var a = JsonDocument.Parse(plain.Stdout);
        using var b = JsonDocument.Parse(drafted.Stdout);
        Assert.Equal(a.RootElement.GetProperty("new_tokens").GetRawText(), b.RootElement.GetProperty("new_tokens").GetRawText());
        var spec = b.RootElement.GetProperty("speculation");
        Assert.True(spec.GetProperty("steps").GetInt32() <= 12);
        if (option == "--draft-model") Assert.True(spec.GetProperty("steps").GetInt32() < 12, spec.ToString());
    }

    [Fact]
    public async Task Generate_with_beams_gives_what_the_library_gives()
    {
        using var r = Reference.Load("llama-gqa");
        var prompt = r.IdRows("generation.prompt_ids")[0];
        var res = await CliRunner.RunAsync("generate", "--model", Fixture, "--input-ids", string.Join(",", prompt), "-n", "6", "--greedy",
            "--ignore-eos", "--num-beams", "4", "--length-penalty", "0.5", "--json");
        Assert.True(res.ExitCode == 0, res.Stderr);
        using var lm = PetalsSharp.Models.CausalLM.Load(Fixture);
        var expected = await PetalsSharp.Generation.Generator.GenerateAsync(lm, [prompt],
            new PetalsSharp.Generation.GenerationOptions { MaxNewTokens = 6, IgnoreEos = true, NumBeams = 4, LengthPenalty = 0.5 });
        using var doc = JsonDocument.Parse(res.Stdout);
        Assert.Equal(expected.NewTokens[0], doc.RootElement.GetProperty("new_tokens")[0].EnumerateArray().Select(x => x.GetInt32()).ToList());
    }

    [Fact]
    public async Task Unknown_option_is_a_usage_error()
    {
        var res = await CliRunner.RunAsync("generate", "--model", Fixture, "--frobnicate");
        Assert.NotEqual(0, res.ExitCode);
        Assert.Contains("--frobnicate", res.Stderr + res.Stdout);
    }

    [Fact]
    public async Task Bad_checkpoint_is_reported_with_file_and_tensor()
    {
        var dir = Directory.CreateTempSubdirectory("petals-badckpt").FullName;
        File.Copy(Path.Combine(Fixture, "config.json"), Path.Combine(dir, "config.json"));
        var bytes = File.ReadAllBytes(Path.Combine(Fixture, "model.safetensors"));
        File.WriteAllBytes(Path.Combine(dir, "model.safetensors"), bytes[..(bytes.Length / 2)]);
        var res = await CliRunner.RunAsync("generate", "--model", dir, "--input-ids", "1,2");
        Assert.NotEqual(0, res.ExitCode);
        Assert.Contains(Path.Combine(dir, "model.safetensors"), res.Stderr);
        Assert.Contains("truncated", res.Stderr);
        Assert.Single(res.Stderr.Trim().Split('\n'));
    }

    [Fact]
    public async Task Create_model_then_generate_text_from_a_prompt()
    {
        var dir = Path.Combine(Directory.CreateTempSubdirectory("petals-create").FullName, "tiny");
        var res = await CliRunner.RunAsync("create-model", "--family", "llama", "--hidden-size", "32", "--layers", "2",
            "--heads", "4", "--kv-heads", "2", "--intermediate-size", "64", "--vocab-size", "1000", "--seed", "3", "--out", dir);
        Assert.True(res.ExitCode == 0, res.Stderr);
        foreach (var f in new[] { "config.json", "model.safetensors", "tokenizer.json" })
            Assert.True(File.Exists(Path.Combine(dir, f)), f);
        var gen = await CliRunner.RunAsync("generate", "--model", dir, "--prompt", "Hello world", "-n", "8", "--seed", "1");
        Assert.True(gen.ExitCode == 0, gen.Stderr);
        Assert.StartsWith("Hello world", gen.Stdout);
        Assert.True(gen.Stdout.Trim().Length > "Hello world".Length);
    }
}
