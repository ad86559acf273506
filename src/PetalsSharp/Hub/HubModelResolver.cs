using System.Security.Cryptography;

namespace PetalsSharp.Hub;

/// <summary>A model folder ready to load: a hub snapshot (or a local folder) and the name the swarm knows it by.</summary>
public sealed record ResolvedModel(string Directory, string Name, string? Commit = null);

/// <summary>
/// Turns <c>ORG/NAME[@REVISION]</c> into a snapshot folder in the shared hub cache, downloading only the files a
/// process needs: config and tokenizer files, then the weight shards that hold the selected tensors.
/// Online, every file is checked against the hub (a branch may have moved); if the hub cannot be reached, a
/// complete cached snapshot is used. With <c>HF_HUB_OFFLINE=1</c> only the cache is read.
/// </summary>
public sealed class HubModelResolver : IDisposable
{
    /// <summary>Config and tokenizer files; all but config.json are optional.</summary>
    public static readonly IReadOnlyList<string> MetaFiles =
    [
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    ];

    const int Attempts = 3;
    readonly HubSettings _settings;
    readonly HubClient _client;

    public HubModelResolver(HubSettings settings, HttpMessageHandler? handler = null)
    {
        _settings = settings;
        _client = new HubClient(settings, handler);
    }

    /// <summary>Called with a one-line notice, e.g. when the hub is unreachable and the cache is used.</summary>
    public Action<string>? OnNotice { get; init; }

    /// <exception cref="HubException">Missing repo/file, access denied, offline with nothing cached, or a corrupt download.</exception>
    public Task<ResolvedModel> ResolveAsync(HubModelId id, WeightSelection weights, IProgress<HubProgress>? progress = null,
        CancellationToken ct = default)
    {
        var cache = new HubCache(_settings.CacheDir, id);
        return OnlineOrCachedAsync(cache, () => DownloadAsync(cache, weights, progress, ct), why => ResolveFromCache(cache, weights, why));
    }

    /// <summary>
    /// Resolves a repo of a fixed set of required files, such as a PEFT adapter (<c>adapter_config.json</c>,
    /// <c>adapter_model.safetensors</c>), with the same cache, offline, resume and hash rules as a model.
    /// </summary>
    /// <exception cref="HubException">A missing repo or file, offline with nothing cached, or a corrupt download.</exception>
    public Task<ResolvedModel> ResolveFilesAsync(HubModelId id, IReadOnlyList<string> files, IProgress<HubProgress>? progress = null,
        CancellationToken ct = default)
    {
        if (files.Count == 0) throw new ArgumentException("name at least one file", nameof(files));
        var cache = new HubCache(_settings.CacheDir, id);
        return OnlineOrCachedAsync(cache, async () =>
        {
            string? commit = null;
            foreach (var file in files)
            {
                // The first file pins the commit, as for a model.
                var at = commit is null ? id : id with { Revision = commit };
                var fetched = await FetchAsync(cache, at, file, required: true, progress, ct).ConfigureAwait(false);
                commit ??= fetched;
            }
            cache.WriteRef(id.Revision, commit!);
            return new ResolvedModel(cache.SnapshotDir(commit!), id.Name, commit);
        }, why => FilesFromCache(cache, files, why));
    }

    /// <summary>Offline: the cache only. Online: download, falling back to a cached snapshot when the hub is unreachable.</summary>
    async Task<ResolvedModel> OnlineOrCachedAsync(HubCache cache, Func<Task<ResolvedModel>> download, Func<string, ResolvedModel> fromCache)
    {
        if (_settings.Offline) return fromCache("HF_HUB_OFFLINE is set");
        try
        {
            return await download().ConfigureAwait(false);
        }
        catch (HttpRequestException e) when (cache.CachedCommit(cache.Id.Revision) is not null)
        {
            var resolved = fromCache($"the hub is unreachable ({e.Message})");
            OnNotice?.Invoke($"{_settings.Endpoint} is unreachable ({e.Message}); using the cached snapshot {resolved.Commit}");
            return resolved;
        }
        catch (HttpRequestException e)
        {
            throw new HubException($"cannot download {cache.Id} from {_settings.Endpoint}: {e.Message} (and it is not in the cache {cache.RepoDir})", e);
        }
    }

    static ResolvedModel FilesFromCache(HubCache cache, IReadOnlyList<string> files, string why)
    {
        var id = cache.Id;
        string commit = cache.CachedCommit(id.Revision)
            ?? throw new HubException($"{why}, and {id} has no cached snapshot in {cache.RepoDir}; run once online (or unset HF_HUB_OFFLINE) to download it");
        var missing = files.Where(f => cache.CachedFile(commit, f) is null).ToList();
        if (missing.Count > 0)
            throw new HubException($"{why}, and the cached snapshot {cache.SnapshotDir(commit)} of {id} lacks {string.Join(", ", missing)}");
        return new ResolvedModel(cache.SnapshotDir(commit), id.Name, commit);
    }

    async Task<ResolvedModel> DownloadAsync(HubCache cache, WeightSelection weights, IProgress<HubProgress>? progress, CancellationToken ct)
    {
        var id = cache.Id;
        string? commit = null;
        foreach (var file in MetaFiles)
        {
            // The first HEAD pins the commit; later files are asked for at that commit so a moving branch cannot mix them.
            var at = commit is null ? id : id with { Revision = commit };
            var info = await FetchAsync(cache, at, file, required: file == "config.json", progress, ct).ConfigureAwait(false);
            commit ??= info;
        }
        cache.WriteRef(id.Revision, commit!);
        var pinned = id with { Revision = commit! };
        string snapshot = cache.SnapshotDir(commit!);
        var index = await FetchAsync(cache, pinned, Models.Weights.WeightStore.IndexFileName, required: false, progress, ct).ConfigureAwait(false);
        foreach (var file in weights.FilesIn(snapshot))
            await FetchAsync(cache, pinned, file, required: true, progress, ct).ConfigureAwait(false);
        return new ResolvedModel(snapshot, id.Name, commit);
    }

    /// <summary>Makes <paramref name="file"/> present in the snapshot; returns the commit, or null when the file does not exist.</summary>
    async Task<string?> FetchAsync(HubCache cache, HubModelId at, string file, bool required, IProgress<HubProgress>? progress, CancellationToken ct)
    {
        var info = await _client.HeadAsync(at, file, ct).ConfigureAwait(false);
        if (info is null)
        {
            if (HubModelId.IsCommitHash(at.Revision)) cache.MarkMissing(at.Revision, file);
            if (required) throw new HubException($"{cache.Id}: {file} does not exist in the repo");
            return null;
        }
        string blob = cache.BlobPath(info.Etag);
        if (!File.Exists(blob))
        {
            Directory.CreateDirectory(cache.BlobsDir);
            using var fileLock = await LockAsync(blob + ".lock", ct).ConfigureAwait(false);
            if (!File.Exists(blob)) await DownloadBlobAsync(cache, at, file, info, progress, ct).ConfigureAwait(false);
        }
        else if (new FileInfo(blob).Length != info.Size)
        {
            throw new HubException($"{cache.Id}: cached {blob} has {new FileInfo(blob).Length} bytes but the hub says {file} has {info.Size}; delete it and run again");
        }
        cache.Link(info.Commit, file, info.Etag);
        progress?.Report(new HubProgress(file, info.Size, info.Size, Done: true));
        return info.Commit;
    }

    async Task DownloadBlobAsync(HubCache cache, HubModelId at, string file, HubFileInfo info, IProgress<HubProgress>? progress, CancellationToken ct)
    {
        string partial = cache.IncompletePath(info.Etag);
        for (int attempt = 1; ; attempt++)
        {
            try
            {
                await _client.DownloadAsync(at, file, info, partial, progress, ct).ConfigureAwait(false);
                break;
            }
            catch (Exception e) when (e is HttpRequestException or IOException && attempt < Attempts && !ct.IsCancellationRequested)
            {
                OnNotice?.Invoke($"{file}: {e.Message}; resuming (attempt {attempt + 1} of {Attempts})");
                await Task.Delay(TimeSpan.FromMilliseconds(200 * attempt), ct).ConfigureAwait(false);
            }
        }
        long size = new FileInfo(partial).Length;
        string? problem = size != info.Size ? $"{size} bytes where the hub says {info.Size}" : await CheckHashAsync(partial, info.Etag, ct).ConfigureAwait(false);
        if (problem is not null)
        {
            File.Delete(partial);
            throw new HubException($"{cache.Id}: the download of {file} is corrupt ({problem}); it was deleted, run again to retry");
        }
        File.Move(partial, cache.BlobPath(info.Etag), overwrite: true);
    }

    /// <summary>
    /// LFS files have the content's sha256 as ETag; small files the git blob sha1. Anything else is not checked
    /// (the size still is).
    /// </summary>
    static async Task<string?> CheckHashAsync(string path, string etag, CancellationToken ct)
    {
        bool sha256 = etag.Length == 64, gitSha1 = etag.Length == 40;
        if (!(sha256 || gitSha1) || !etag.All(char.IsAsciiHexDigitLower)) return null;
        await using var stream = File.OpenRead(path);
        string actual;
        if (sha256)
        {
            actual = Convert.ToHexStringLower(await SHA256.HashDataAsync(stream, ct).ConfigureAwait(false));
        }
        else
        {
            using var sha1 = IncrementalHash.CreateHash(HashAlgorithmName.SHA1);
            sha1.AppendData(System.Text.Encoding.ASCII.GetBytes($"blob {stream.Length}\0"));
            var buffer = new byte[1 << 16];
            int read;
            while ((read = await stream.ReadAsync(buffer, ct).ConfigureAwait(false)) > 0) sha1.AppendData(buffer, 0, read);
            actual = Convert.ToHexStringLower(sha1.GetHashAndReset());
        }
        return actual == etag ? null : $"{(sha256 ? "sha256" : "git sha1")} {actual}, expected {etag}";
    }

    ResolvedModel ResolveFromCache(HubCache cache, WeightSelection weights, string why)
    {
        var id = cache.Id;
        string commit = cache.CachedCommit(id.Revision)
            ?? throw new HubException($"{why}, and {id} has no cached snapshot in {cache.RepoDir}; run once online (or unset HF_HUB_OFFLINE) to download it");
        string snapshot = cache.SnapshotDir(commit);
        var missing = new List<string>();
        if (cache.CachedFile(commit, "config.json") is null) missing.Add("config.json");
        else
        {
            try
            {
                missing.AddRange(weights.FilesIn(snapshot).Where(f => cache.CachedFile(commit, f) is null));
            }
            catch (Models.ConfigException e)
            {
                throw new HubException($"{why}: the cached {id} config is unreadable: {e.Message}", e);
            }
        }
        if (missing.Count > 0)
            throw new HubException($"{why}, and the cached snapshot {snapshot} of {id} lacks {string.Join(", ", missing)} needed for {weights}");
        return new ResolvedModel(snapshot, id.Name, commit);
    }

    // One process downloads a blob at a time; others (e.g. several servers started together) wait for it.
    static async Task<IDisposable> LockAsync(string path, CancellationToken ct)
    {
        while (true)
        {
            try
            {
                return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, 1, FileOptions.DeleteOnClose);
            }
            catch (IOException)
            {
                await Task.Delay(250, ct).ConfigureAwait(false);
            }
        }
    }

    public void Dispose() => _client.Dispose();
}
