using System.Globalization;
using System.Text.RegularExpressions;
using PetalsSharp.Server;
using PetalsSharp.Tests.Cli;
using Xunit;

namespace PetalsSharp.Tests.Training;

/// <summary>A tiny random llama (2 blocks, hidden 32) from <c>petals create-model</c>, served by two server processes.</summary>
public sealed class TinySwarm : IAsyncLifetime
{
    public string Dir { get; } = Text.TempDir.Create();
    public string ModelDir => Path.Combine(Dir, "m");
    public ServerProcess[] Servers { get; private set; } = [];
    public string Peers => string.Join(",", Servers.Select(s => s.Address));

    public async Task InitializeAsync()
    {
        var created = await CliRunner.RunAsync("create-model", "--hidden-size", "32", "--layers", "2", "--heads", "2",
            "--vocab-size", "300", "--seed", "1", "--out", ModelDir);
        if (created.ExitCode != 0) throw new InvalidOperationException(created.Stderr);
        Servers = await Task.WhenAll(ServerProcess.StartAsync(ModelDir, 0, 1), ServerProcess.StartAsync(ModelDir, 1, 2));
        // The task: after "xyz", continue " abcabcabc" (loss only on the completion).
        File.WriteAllLines(Path.Combine(Dir, "data.jsonl"),
            Enumerable.Repeat("{\"prompt\": \"xyz\", \"completion\": \" abcabcabc\"}", 8));
    }

    public Task DisposeAsync()
    {
        foreach (var s in Servers) s.Dispose();
        Directory.Delete(Dir, recursive: true);
        return Task.CompletedTask;
    }
}

/// <summary>
/// <c>petals finetune</c> through two servers teaches a random model a fixed continuation, and
/// <c>petals generate --tuned</c> then produces it (acceptance of the fine-tuning issue).
/// </summary>
[Trait("Category", "Processes")]
public sealed class FinetuneCliTests(TinySwarm swarm) : IClassFixture<TinySwarm>
{
    /// <summary>
    /// Every step is a forward and a backward through both servers; 30 steps (not the 100 the issue allows) keep
    /// each mode under ~20 s on 2 cores.
    /// </summary>
    [Theory]
    [InlineData("ptune")]
    [InlineData("deep_ptune")]
    [InlineData("adapter")]
    public async Task Finetune_halves_the_loss_and_generate_tuned_produces_the_pattern(string mode)
    {
        var output = Path.Combine(swarm.Dir, $"{mode}.safetensors");
        var run = await CliRunner.RunAsync("finetune", "--model", swarm.ModelDir, "--peers", swarm.Peers, "--data", Path.Combine(swarm.Dir, "data.jsonl"),
            "--mode", mode, "--steps", "30", "--batch-size", "2", "--lr", "0.05", "--pre-seq-len", "8", "--out", output,
            "--eval-data", Path.Combine(swarm.Dir, "data.jsonl"), "--eval-every", "15");
        Assert.True(run.ExitCode == 0, run.Stderr);
        var losses = Regex.Matches(run.Stdout, @"^step (\d+)/30 loss ([0-9.]+)", RegexOptions.Multiline)
            .Select(m => double.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture)).ToList();
        Assert.Equal(30, losses.Count);
        Assert.True(losses[^1] <= 0.5 * losses[0], $"{mode}: loss {losses[0]} -> {losses[^1]}");
        Assert.True(File.Exists(output));
        var evals = Regex.Matches(run.Stdout, @"^step (15|30)/30 .* eval_loss ([0-9.]+)$", RegexOptions.Multiline)
            .Select(m => double.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture)).ToList();
        Assert.Equal(2, evals.Count);
        Assert.Contains(FormattableString.Invariant($"eval loss {evals[1]:F4}; saved"), run.Stdout);

        string[] Generate(params string[] extra) => ["generate", "--model", swarm.ModelDir, "--peers", swarm.Peers,
            "--prompt", "xyz", "--max-new-tokens", "9", "--greedy", .. extra];
        var plain = await CliRunner.RunAsync(Generate());
        var tuned = await CliRunner.RunAsync(Generate("--tuned", output));
        Assert.True(plain.ExitCode == 0 && tuned.ExitCode == 0, plain.Stderr + tuned.Stderr);
        Assert.DoesNotContain("abcabc", plain.Stdout);
        Assert.Contains("xyz abcabc", tuned.Stdout);
    }

    [Theory]
    [InlineData("{\"text\": \"fine\"}\n{\"completion\": \"no prompt\"}", "data.jsonl:2")]
    [InlineData("", "no examples")]
    public async Task A_bad_data_file_is_one_error_line_and_a_nonzero_exit(string content, string message)
    {
        var data = Path.Combine(swarm.Dir, "bad", "data.jsonl");
        Directory.CreateDirectory(Path.GetDirectoryName(data)!);
        File.WriteAllText(data, content);
        var run = await CliRunner.RunAsync("finetune", "--model", swarm.ModelDir, "--peers", swarm.Peers, "--data", data,
            "--out", Path.Combine(swarm.Dir, "never.safetensors"));
        Assert.NotEqual(0, run.ExitCode);
        Assert.Single(run.Stderr.Trim().Split('\n'));
        Assert.Contains(message, run.Stderr);
        Assert.False(File.Exists(Path.Combine(swarm.Dir, "never.safetensors")));
    }

    [Fact]
    public async Task A_missing_data_file_and_an_unknown_mode_are_clear_errors()
    {
        var missing = await CliRunner.RunAsync("finetune", "--model", swarm.ModelDir, "--data", "/nonexistent.jsonl", "--out", "x.safetensors");
        Assert.NotEqual(0, missing.ExitCode);
        Assert.Contains("data file not found", missing.Stderr);
        var mode = await CliRunner.RunAsync("finetune", "--model", swarm.ModelDir, "--data", Path.Combine(swarm.Dir, "data.jsonl"),
            "--mode", "prefix", "--out", "x.safetensors");
        Assert.NotEqual(0, mode.ExitCode);
        Assert.Contains("--mode", mode.Stderr);
    }
}
