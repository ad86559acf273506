using System.CommandLine;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Text.Json;
using Grpc.Core;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using Spectre.Console;
using static TorchSharp.torch;

namespace PetalsSharp.Cli.Commands;

/// <summary>
/// <c>petals load</c>: a load generator for operators. N sessions decode at once through the swarm from one process;
/// it reports aggregate tokens per second, inter-token latency percentiles, errors and busy answers, and checks that
/// every session's greedy tokens equal what the same prompt gives alone.
/// </summary>
public static class LoadCommand
{
    /// <summary>What one run measured; <c>--json</c> writes these fields (a contract: keep the names).</summary>
    public sealed record Report(int Sessions, int PromptTokens, int NewTokens, long Tokens, double Seconds, double AggregateTokS,
        double P50Ms, double P95Ms, double P99Ms, double FirstTokenP50Ms, int Errors, int Busy, int Mismatches, bool Checked, IReadOnlyList<string> ErrorMessages);

    public static Command Create()
    {
        var model = Cli.ModelOption();
        var dtype = Cli.DtypeOption();
        var quant = Cli.QuantOption("the client's embeddings and head");
        var sessions = new Option<int>("--sessions") { Description = "Sessions decoding at once", DefaultValueFactory = _ => 8 };
        var promptTokens = new Option<int>("--prompt-tokens") { Description = "Prompt length of each session (random token ids)", DefaultValueFactory = _ => 32 };
        var newTokens = new Option<int>("--new-tokens") { Description = "Tokens each session generates", DefaultValueFactory = _ => 32 };
        var seed = new Option<int>("--seed") { Description = "Seed of the random prompts", DefaultValueFactory = _ => 0 };
        var noCheck = new Option<bool>("--no-check") { Description = "Skip the solo runs that each session's tokens are checked against" };
        var json = new Option<bool>("--json") { Description = "Print {\"sessions\", \"aggregate_tok_s\", \"p50_ms\", \"p95_ms\", \"p99_ms\", \"errors\", \"busy\", ...}" };
        var remote = new ModelOpener.RemoteOptionSet();
        var cmd = new Command("load", "Run many sessions at once through a swarm and measure it.\n\nExamples:\n" +
            "  petals load -m ./my-model --initial-peers 127.0.0.1:31337 --sessions 8 --prompt-tokens 64 --new-tokens 64\n" +
            "  petals load -m ./my-model --peers 127.0.0.1:31330 --sessions 32 --json")
        {
            model, dtype, quant, sessions, promptTokens, newTokens, seed, noCheck, json,
        };
        remote.AddTo(cmd);
        cmd.SetAction(async (pr, ct) =>
        {
            var where = remote.Read(pr);
            if (string.IsNullOrWhiteSpace(where.Peers) && string.IsNullOrWhiteSpace(where.InitialPeers))
                throw new CliException("petals load drives a swarm: give --peers or --initial-peers");
            int n = pr.GetValue(sessions), p = pr.GetValue(promptTokens), t = pr.GetValue(newTokens);
            if (n < 1) throw new CliException($"--sessions must be at least 1 (got {n})");
            if (p < 1) throw new CliException($"--prompt-tokens must be at least 1 (got {p})");
            if (t < 1) throw new CliException($"--new-tokens must be at least 1 (got {t})");
            using var lm = await ModelOpener.OpenAsync(pr.GetValue(model)!, Cli.ParseDtypeOrDefault(pr.GetValue(dtype)), where, ct,
                Cli.ParseQuant(pr.GetValue(quant)));
            var report = await RunAsync(lm, n, p, t, pr.GetValue(seed), !pr.GetValue(noCheck), ct);
            if (pr.GetValue(json)) WriteJson(report);
            else WriteTable(report);
            if (report.Mismatches > 0)
            {
                Console.Error.WriteLine($"error: {report.Mismatches} of {n} sessions generated other tokens than their prompt gives alone");
                return 1;
            }
            return 0;
        });
        return cmd;
    }

    /// <summary>Random prompts (ids above the usual specials), solo references if checked, then all sessions at once.</summary>
    public static async Task<Report> RunAsync(CausalLM lm, int sessions, int promptTokens, int newTokens, int seed, bool check, CancellationToken ct)
    {
        int vocab = lm.Config.VocabSize, low = Math.Min(3, vocab - 1);
        var prompts = Enumerable.Range(0, sessions).Select(i =>
        {
            var random = new Random(seed * 7919 + i);
            return (IReadOnlyList<int>)Enumerable.Range(0, promptTokens).Select(_ => random.Next(low, vocab)).ToArray();
        }).ToList();
        var options = new GenerationOptions { MaxNewTokens = newTokens, DoSample = false, IgnoreEos = true };

        var solo = new List<IReadOnlyList<int>>();
        if (check)
            foreach (var prompt in prompts) solo.Add((await lm.GenerateAsync([prompt], options, ct)).NewTokens[0]);

        var results = new (List<int> Tokens, List<double> GapsMs, Exception? Error)[sessions];
        var heads = new LoadHeads(lm.Ends);
        var clock = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, sessions).Select(i => Task.Run(async () =>
        {
            var tokens = new List<int>();
            var gaps = new List<double>();
            var entered = new StrongBox<bool>();
            try
            {
                results[i] = (tokens, gaps, await DecodeAsync(lm, heads, prompts[i], newTokens, tokens, gaps, entered, ct));
            }
            catch (Exception e) when (e is not OperationCanceledException || !ct.IsCancellationRequested)
            {
                results[i] = (tokens, gaps, e);
            }
            finally
            {
                if (entered.Value) heads.Leave();
            }
        }, ct)));
        double seconds = clock.Elapsed.TotalSeconds;

        // The first gap of a session includes its prefill: it is reported apart, the rest are the per-token latencies.
        var decodeGaps = results.SelectMany(r => r.GapsMs.Skip(1)).Order().ToArray();
        var firstGaps = results.Where(r => r.GapsMs.Count > 0).Select(r => r.GapsMs[0]).Order().ToArray();
        var errors = results.Where(r => r.Error is not null).Select(r => r.Error!).ToList();
        int mismatches = check ? Enumerable.Range(0, sessions).Count(i => results[i].Error is null && !results[i].Tokens.SequenceEqual(solo[i])) : 0;
        long tokensDone = results.Sum(r => (long)r.Tokens.Count);
        return new Report(sessions, promptTokens, newTokens, tokensDone, seconds, tokensDone / seconds,
            Percentile(decodeGaps, 0.50), Percentile(decodeGaps, 0.95), Percentile(decodeGaps, 0.99), Percentile(firstGaps, 0.50),
            errors.Count, errors.Count(IsBusy), mismatches, check, errors.Select(e => Cli.Describe(e)).Distinct().Take(5).ToList());
    }

    /// <summary>
    /// One session's greedy decoding: embeddings here, blocks through the swarm, norm and head shared with the other
    /// sessions (<see cref="LoadHeads"/>). Fills <paramref name="tokens"/> and the gap before each one; returns null.
    /// </summary>
    static async Task<Exception?> DecodeAsync(CausalLM lm, LoadHeads heads, IReadOnlyList<int> prompt, int newTokens,
        List<int> tokens, List<double> gaps, StrongBox<bool> entered, CancellationToken ct)
    {
        await using var session = lm.Blocks.OpenSession(new SessionOptions(1, prompt.Count + newTokens));
        long last = Stopwatch.GetTimestamp();
        var ids = prompt.Select(t => (long)t).ToArray();
        for (int k = 0; k < newTokens; k++)
        {
            int token;
            using (var input = tensor(ids, [1, ids.Length]))                         // [1, T]
            using (var hidden = lm.Ends.Embed(input))                                 // [1, T, H]
            using (var output = await session.StepAsync(hidden, null, ct))           // [1, T, H]
            using (var lastRow = output.select(1, ids.Length - 1))                    // [1, H]
            {
                if (!entered.Value) heads.Enter();   // from its first row: a session waiting for room holds up nobody
                entered.Value = true;
                token = await heads.NextAsync(lastRow);
            }
            long now = Stopwatch.GetTimestamp();
            gaps.Add(Stopwatch.GetElapsedTime(last, now).TotalMilliseconds);
            last = now;
            tokens.Add(token);
            ids = [token];
        }
        return null;
    }

    /// <summary>A server's "no room now" answer anywhere in the chain of causes.</summary>
    static bool IsBusy(Exception e)
    {
        for (var x = e; x is not null; x = x.InnerException)
            if (x is RpcException { StatusCode: StatusCode.ResourceExhausted }) return true;
        return e is AggregateException a && a.InnerExceptions.Any(IsBusy);
    }

    /// <summary>Nearest-rank percentile of sorted values (0 when there are none).</summary>
    static double Percentile(double[] sorted, double q) =>
        sorted.Length == 0 ? 0 : sorted[Math.Clamp((int)Math.Ceiling(q * sorted.Length) - 1, 0, sorted.Length - 1)];

    static void WriteJson(Report r)
    {
        using var stdout = Console.OpenStandardOutput();
        using (var w = new Utf8JsonWriter(stdout, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteNumber("sessions", r.Sessions);
            w.WriteNumber("aggregate_tok_s", Math.Round(r.AggregateTokS, 2));
            w.WriteNumber("p50_ms", Math.Round(r.P50Ms, 2));
            w.WriteNumber("p95_ms", Math.Round(r.P95Ms, 2));
            w.WriteNumber("p99_ms", Math.Round(r.P99Ms, 2));
            w.WriteNumber("errors", r.Errors);
            w.WriteNumber("busy", r.Busy);
            w.WriteNumber("mismatches", r.Mismatches);
            w.WriteBoolean("checked", r.Checked);
            w.WriteNumber("prompt_tokens", r.PromptTokens);
            w.WriteNumber("new_tokens", r.NewTokens);
            w.WriteNumber("tokens", r.Tokens);
            w.WriteNumber("seconds", Math.Round(r.Seconds, 3));
            w.WriteNumber("first_token_p50_ms", Math.Round(r.FirstTokenP50Ms, 2));
            w.WriteStartArray("error_messages");
            foreach (var m in r.ErrorMessages) w.WriteStringValue(m);
            w.WriteEndArray();
            w.WriteEndObject();
        }
        stdout.WriteByte((byte)'\n');
    }

    static void WriteTable(Report r)
    {
        var table = new Table().AddColumn("").AddColumn("");
        table.AddRow("sessions", $"{r.Sessions} × ({r.PromptTokens} prompt + {r.NewTokens} new tokens)");
        table.AddRow("aggregate", $"{r.AggregateTokS:F1} tok/s ({r.Tokens} tokens in {r.Seconds:F2} s)");
        table.AddRow("per-token latency", $"p50 {r.P50Ms:F1} ms, p95 {r.P95Ms:F1} ms, p99 {r.P99Ms:F1} ms");
        table.AddRow("first token (with prefill)", $"p50 {r.FirstTokenP50Ms:F1} ms");
        table.AddRow("errors / busy", $"{r.Errors} / {r.Busy}");
        table.AddRow("same tokens as alone", r.Checked ? $"{r.Sessions - r.Errors - r.Mismatches} of {r.Sessions - r.Errors}" : "not checked (--no-check)");
        AnsiConsole.Write(table);
        foreach (var m in r.ErrorMessages) Console.Error.WriteLine($"error: {m}");
    }
}
