using PetalsSharp.Hub;
using Spectre.Console;

namespace PetalsSharp.Cli.Commands;

/// <summary>
/// Resolves every command's <c>--model</c>: an existing folder is used as is; <c>ORG/NAME[@REVISION]</c> is fetched
/// from the Hugging Face Hub into the shared cache (only the files <paramref name="weights"/> needs), with
/// progress bars on stderr.
/// </summary>
public static class ModelSource
{
    /// <summary>The folder to load and, for a hub model, the name the swarm knows it by (null: the folder's name).</summary>
    public sealed record Resolved(string Directory, string? SwarmName);

    public static async Task<Resolved> ResolveAsync(string model, WeightSelection weights, CancellationToken ct)
    {
        if (Directory.Exists(model)) return new Resolved(model, null);
        if (!HubModelId.TryParse(model, out var id))
            throw new CliException($"model folder not found: {model} (nor is it a Hugging Face model id ORG/NAME[@REVISION])");
        var settings = HubSettings.FromEnvironment();
        using var resolver = new HubModelResolver(settings) { OnNotice = line => Console.Error.WriteLine($"hub: {line}") };
        ResolvedModel resolved;
        if (Console.IsErrorRedirected || settings.Offline)
        {
            resolved = await resolver.ResolveAsync(id, weights, new SyncProgress(p =>
            {
                if (p.Done) Console.Error.WriteLine($"hub: {id} {p.File} ({p.Total / 1048576.0:F1} MB) ready");
            }), ct);
        }
        else
        {
            resolved = null!;
            var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
            await console.Progress().AutoClear(false)
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new DownloadedColumn(), new TransferSpeedColumn())
                .StartAsync(async ctx =>
                {
                    var tasks = new Dictionary<string, ProgressTask>();
                    // Reports arrive on the download's thread; Spectre's tasks are safe to update from any thread.
                    var progress = new SyncProgress(p =>
                    {
                        lock (tasks)
                        {
                            if (!tasks.TryGetValue(p.File, out var task))
                                tasks[p.File] = task = ctx.AddTask(Markup.Escape(p.File), maxValue: Math.Max(1, p.Total));
                            task.Value = p.Downloaded;
                            if (p.Done) task.StopTask();
                        }
                    });
                    resolved = await resolver.ResolveAsync(id, weights, progress, ct);
                });
        }
        return new Resolved(resolved.Directory, resolved.Name);
    }

    sealed class SyncProgress(Action<HubProgress> report) : IProgress<HubProgress>
    {
        public void Report(HubProgress value) => report(value);
    }
}
