using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using PetalsSharp.Dht;
using PetalsSharp.Server;
using PetalsSharp.Swarm;
using PetalsSharp.Tests.Cli;
using Xunit;

namespace PetalsSharp.Tests.Swarm;

/// <summary>
/// Issue 17, acceptance 3: stories260K served by an int8 server (blocks 0:3) and an nf4 server (3:5) found through
/// the DHT. The swarm table shows their formats, generation and prompt tuning run through them (backward through
/// packed weights), and a client that requires exact weights is refused with a clear error.
/// </summary>
[Trait("Category", "Processes")]
public sealed class QuantSwarmTests
{
    [SkippableFact]
    public async Task An_int8_and_an_nf4_server_serve_generate_and_train_and_exact_clients_refuse_them()
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        string model = Fixtures.Stories260KDir!;
        string prefix = ModelNames.DhtPrefix(ModelNames.FromFolder(model));
        await using var bootstrap = await DhtNode.StartAsync(new DhtNodeOptions { Host = "127.0.0.1", Port = 0 });
        using var a = await ServerProcess.StartAsync(model, 0, 3, "--initial-peers", bootstrap.PeerAddress, "--update-period", "2", "--quant", "int8");
        using var b = await ServerProcess.StartAsync(model, 3, 5, "--initial-peers", bootstrap.PeerAddress, "--update-period", "2", "--quant", "nf4");
        var deadline = DateTime.UtcNow.AddSeconds(120);
        while ((await SwarmReader.ReadAsync(bootstrap, prefix, 5)).Online.Count < 2)
        {
            Assert.True(DateTime.UtcNow < deadline, "both servers did not come online");
            await Task.Delay(200);
        }

        var swarm = await CliRunner.RunAsync("swarm", "--initial-peers", bootstrap.Address, "--json");
        Assert.True(swarm.ExitCode == 0, swarm.Stderr);
        using (var doc = JsonDocument.Parse(swarm.Stdout))
        {
            var servers = doc.RootElement.GetProperty("models").EnumerateArray().Single(m => m.GetProperty("dht_prefix").GetString() == prefix)
                .GetProperty("servers").EnumerateArray().ToDictionary(s => s.GetProperty("start").GetInt32(), s => s.GetProperty("quant").GetString());
            Assert.Equal("int8", servers[0]);
            Assert.Equal("nf4", servers[3]);
        }

        var generated = await CliRunner.RunAsync("generate", "--model", model, "--initial-peers", bootstrap.Address,
            "--prompt", "Once upon a time", "--max-new-tokens", "16", "--greedy");
        Assert.True(generated.ExitCode == 0, generated.Stderr);
        Assert.Contains("Once upon a time, there was a little girl", generated.Stdout);

        var exact = await CliRunner.RunAsync("generate", "--model", model, "--initial-peers", bootstrap.Address,
            "--prompt", "Once upon a time", "--max-new-tokens", "4", "--require-exact");
        Assert.NotEqual(0, exact.ExitCode);
        Assert.Contains("exact weights were required", exact.Stderr);
        Assert.Contains(":int8", exact.Stderr);
        Assert.Single(exact.Stderr.Trim().Split('\n'));

        // Prompt tuning: every step is a forward and a backward through both packed spans.
        string dir = Text.TempDir.Create();
        try
        {
            var data = Path.Combine(dir, "data.jsonl");
            File.WriteAllLines(data, Enumerable.Repeat("{\"prompt\": \"Tom had a\", \"completion\": \" big red dog. The dog was big and red.\"}", 8));
            var tune = await CliRunner.RunAsync("finetune", "--model", model, "--initial-peers", bootstrap.Address, "--data", data,
                "--mode", "ptune", "--steps", "12", "--batch-size", "2", "--lr", "0.05", "--pre-seq-len", "4", "--out", Path.Combine(dir, "p.safetensors"));
            Assert.True(tune.ExitCode == 0, tune.Stderr);
            var losses = Regex.Matches(tune.Stdout, @"^step (\d+)/12 loss ([0-9.]+)", RegexOptions.Multiline)
                .Select(m => double.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture)).ToList();
            Assert.Equal(12, losses.Count);
            Assert.True(losses[^1] < losses[0], $"loss {losses[0]} -> {losses[^1]}");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
