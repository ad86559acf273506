using System.Text;
using Grpc.Core;
using Xunit.Abstractions;

namespace PetalsSharp.Tests.Security;

/// <summary>
/// What a hostile input got back: a gRPC status name, "HTTP 4xx", a DHT store verdict or a session-level outcome,
/// with the human message that came with it.
/// </summary>
public sealed record Outcome(string Status, string Message)
{
    public static Outcome Of(RpcException e) => new(e.StatusCode.ToString(), e.Status.Detail);

    public static Outcome Ok(string what) => new("OK", what);
}

/// <summary>
/// One enumerated hostile input: its category, a name unique within it, the statuses that count as right, the
/// attack, and optionally words the message must contain (where the status alone could be right for another reason).
/// </summary>
public sealed record HostileCase(string Service, string Category, string Name, string[] Expected, Func<Task<Outcome>> Run, string? Says = null)
{
    public string Id => $"{Service} / {Category} / {Name}";
}

/// <summary>Helpers for sending to calls that the server may end before everything is sent.</summary>
static class Calls
{
    /// <summary>
    /// Writes what it can and completes the request side. A server that refuses early ends the call, and later writes
    /// fail with whatever the transport says; the call's real status is read from the response afterwards.
    /// </summary>
    public static async Task WriteAllAsync<T>(IClientStreamWriter<T> writer, IEnumerable<T> messages, bool complete = true)
    {
        try
        {
            foreach (var m in messages) await writer.WriteAsync(m);
            if (complete) await writer.CompleteAsync();
        }
        catch (Exception e) when (e is RpcException or InvalidOperationException or IOException) { }
    }

    /// <summary>Reads a stream to its end: the status of a refused call is thrown from here.</summary>
    public static async Task DrainAsync<T>(IAsyncStreamReader<T> reader)
    {
        while (await reader.MoveNext(CancellationToken.None)) { }
    }
}

/// <summary>Runs cases, judges each outcome and reports counts by category.</summary>
static class Campaign
{
    // Statuses that never count as clear: success for a hostile input, a server fault, or no answer at all.
    static readonly HashSet<string> NeverClear = ["OK", "Internal", "Unknown", "hang", "exception", "no status", "setup failed"];

    public static async Task<List<(HostileCase Case, Outcome Outcome)>> RunAsync(IReadOnlyList<HostileCase> cases, int parallel)
    {
        var results = new (HostileCase, Outcome)[cases.Count];
        using var gate = new SemaphoreSlim(parallel);
        await Task.WhenAll(cases.Select(async (c, i) =>
        {
            await gate.WaitAsync();
            try { results[i] = (c, await ObserveAsync(c)); }
            finally { gate.Release(); }
        }));
        return [.. results];
    }

    static async Task<Outcome> ObserveAsync(HostileCase c)
    {
        try
        {
            // Every case bounds itself well inside this; reaching it means the target hung.
            return await Task.Run(c.Run).WaitAsync(TimeSpan.FromSeconds(90));
        }
        catch (RpcException e) { return Outcome.Of(e); }
        catch (TimeoutException) { return new("hang", "no answer within 90 s"); }
        catch (Exception e) { return new("exception", $"{e.GetType().Name}: {e.Message}"); }
    }

    public static bool IsClear(HostileCase c, Outcome o) =>
        !NeverClear.Contains(o.Status) && c.Expected.Contains(o.Status) && !string.IsNullOrWhiteSpace(o.Message)
        && (c.Says is null || o.Message.Contains(c.Says, StringComparison.OrdinalIgnoreCase));

    /// <summary>Prints one line per case and the counts by category; returns the cases whose outcome was not clear.</summary>
    public static List<string> Report(IReadOnlyList<(HostileCase Case, Outcome Outcome)> results, ITestOutputHelper output)
    {
        var failures = new List<string>();
        foreach (var (c, o) in results)
        {
            bool clear = IsClear(c, o);
            output.WriteLine($"{(clear ? "ok  " : "FAIL")} {c.Id}: {o.Status} \"{Clip(o.Message)}\"");
            if (!clear) failures.Add($"{c.Id}: expected {string.Join(" or ", c.Expected)} with a message{(c.Says is null ? "" : $" saying '{c.Says}'")}, got {o.Status} \"{Clip(o.Message)}\"");
        }
        output.WriteLine(CountTable(results.Select(r => r.Case), results.Select(r => r.Outcome.Status).ToList()));
        return failures;
    }

    /// <summary>A markdown table: service, category, cases, and the statuses seen (or expected, without outcomes).</summary>
    public static string CountTable(IEnumerable<HostileCase> cases, IReadOnlyList<string>? statuses = null)
    {
        var list = cases.ToList();
        var sb = new StringBuilder("| Service | Category | Cases | Status |\n|---|---|---|---|\n");
        foreach (var group in list.Select((c, i) => (c, i)).GroupBy(x => (x.c.Service, x.c.Category)))
        {
            var seen = statuses is null
                ? group.SelectMany(x => x.c.Expected).Distinct()
                : group.GroupBy(x => statuses[x.i]).Select(g => $"{g.Key} ×{g.Count()}");
            sb.AppendLine($"| {group.Key.Service} | {group.Key.Category} | {group.Count()} | {string.Join(", ", seen)} |");
        }
        sb.AppendLine($"| **total** | | **{list.Count}** | |");
        return sb.ToString();
    }

    static string Clip(string s) => s.Length <= 160 ? s : s[..160] + "…";
}
