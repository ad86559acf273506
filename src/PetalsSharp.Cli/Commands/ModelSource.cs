using PetalsSharp.Hub;
using PetalsSharp.Models.Lora;
using Spectre.Console;

namespace PetalsSharp.Cli.Commands;

/// <summary>
/// Resolves every command's <c>--model</c> and the server's <c>--adapters</c>: an existing folder is used as is;
/// <c>ORG/NAME[@REVISION]</c> is fetched from the Hugging Face Hub into the shared cache (only the files needed),
/// with progress bars on stderr.
/// </summary>
public static class ModelSource
{
    /// <summary>The folder to load and, for a hub model, the name the swarm knows it by (null: the folder's name).</summary>
    public sealed record Resolved(string Directory, string? SwarmName);

    /// <summary>What a PEFT adapter repo must hold for a server to apply it.</summary>
    public static readonly IReadOnlyList<string> AdapterFiles = [LoraConfig.FileName, LoraAdapter.WeightsFileName];

    public static async Task<Resolved> ResolveAsync(string model, WeightSelection weights, CancellationToken ct)
    {
        if (Directory.Exists(model)) return new Resolved(model, null);
        if (!HubModelId.TryParse(model, out var id))
            throw new CliException($"model folder not found: {model} (nor is it a Hugging Face model id ORG/NAME[@REVISION])");
        var resolved = await WithProgressAsync(id, (resolver, progress) => resolver.ResolveAsync(id, weights, progress, ct));
        return new Resolved(resolved.Directory, resolved.Name);
    }

    /// <summary>
    /// Turns each <c>--adapters</c> entry into <c>NAME=DIR</c>. A hub entry <c>ORG/NAME[@REVISION]</c> that is not
    /// a local folder is downloaded (its two PEFT files) and named by its repo id, as Petals names hub adapters, so
    /// clients ask for <c>--adapter ORG/NAME</c>.
    /// </summary>
    public static async Task<IReadOnlyList<string>> ResolveAdaptersAsync(IReadOnlyList<string> specs, CancellationToken ct)
    {
        var resolved = new List<string>();
        foreach (var spec in specs)
        {
            var at = spec.IndexOf('=');
            string dir = at > 0 ? spec[(at + 1)..] : spec;
            if (Directory.Exists(dir) || !HubModelId.TryParse(dir, out var id))
            {
                resolved.Add(spec);
                continue;
            }
            if (at <= 0 && id.Repo.Length > LoraNames.MaxLength)
                throw new CliException($"--adapters {spec}: the repo id is longer than an adapter name may be ({LoraNames.MaxLength}); give NAME={spec}");
            var snapshot = await WithProgressAsync(id, (resolver, progress) => resolver.ResolveFilesAsync(id, AdapterFiles, progress, ct));
            resolved.Add($"{(at > 0 ? spec[..at] : id.Repo)}={snapshot.Directory}");
        }
        return resolved;
    }

    static async Task<ResolvedModel> WithProgressAsync(HubModelId id, Func<HubModelResolver, IProgress<HubProgress>, Task<ResolvedModel>> run)
    {
        var settings = HubSettings.FromEnvironment();
        using var resolver = new HubModelResolver(settings) { OnNotice = line => Console.Error.WriteLine($"hub: {line}") };
        if (Console.IsErrorRedirected || settings.Offline)
            return await run(resolver, new SyncProgress(p =>
            {
                if (p.Done) Console.Error.WriteLine($"hub: {id} {p.File} ({p.Total / 1048576.0:F1} MB) ready");
            }));
        ResolvedModel resolved = null!;
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
                resolved = await run(resolver, progress);
            });
        return resolved;
    }

    sealed class SyncProgress(Action<HubProgress> report) : IProgress<HubProgress>
    {
        public void Report(HubProgress value) => report(value);
    }
}
