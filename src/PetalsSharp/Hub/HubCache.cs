namespace PetalsSharp.Hub;

/// <summary>
/// The huggingface_hub cache layout for one repo, shared with Python:
/// <c>models--ORG--NAME/blobs/&lt;etag&gt;</c> (content), <c>refs/&lt;revision&gt;</c> (a commit hash),
/// <c>snapshots/&lt;commit&gt;/&lt;file&gt;</c> (a relative symlink to <c>../../blobs/&lt;etag&gt;</c>) and
/// <c>.no_exist/&lt;commit&gt;/&lt;file&gt;</c> (the file is known to be absent at that commit).
/// </summary>
public sealed class HubCache
{
    public HubCache(string cacheDir, HubModelId id)
    {
        Id = id;
        RepoDir = Path.Combine(Path.GetFullPath(cacheDir), id.CacheFolderName);
    }

    public HubModelId Id { get; }
    public string RepoDir { get; }
    public string BlobsDir => Path.Combine(RepoDir, "blobs");

    public string SnapshotDir(string commit) => Path.Combine(RepoDir, "snapshots", commit);
    public string SnapshotFile(string commit, string file) => Path.Combine(SnapshotDir(commit), file);
    public string BlobPath(string etag) => Path.Combine(BlobsDir, etag);
    public string IncompletePath(string etag) => BlobPath(etag) + ".incomplete";
    string RefPath(string revision) => Path.Combine(RepoDir, "refs", revision);
    string NoExistPath(string commit, string file) => Path.Combine(RepoDir, ".no_exist", commit, file);

    /// <summary>The commit a revision points to in the cache: the revision itself when it is a hash, else <c>refs/</c>.</summary>
    public string? CachedCommit(string revision)
    {
        if (HubModelId.IsCommitHash(revision)) return Directory.Exists(SnapshotDir(revision)) ? revision : null;
        string path = RefPath(revision);
        return File.Exists(path) && File.ReadAllText(path).Trim() is { Length: > 0 } commit && HubModelId.IsCommitHash(commit) ? commit : null;
    }

    public void WriteRef(string revision, string commit)
    {
        if (revision == commit) return;
        string path = RefPath(revision);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        if (!File.Exists(path) || File.ReadAllText(path).Trim() != commit) File.WriteAllText(path, commit);
    }

    /// <summary>The snapshot file if it is there and its blob is complete.</summary>
    public string? CachedFile(string commit, string file)
    {
        string path = SnapshotFile(commit, file);
        return File.Exists(path) ? path : null;   // File.Exists follows the symlink: a dangling link is absent
    }

    public bool KnownMissing(string commit, string file) => File.Exists(NoExistPath(commit, file));

    public void MarkMissing(string commit, string file)
    {
        string path = NoExistPath(commit, file);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllBytes(path, []);
    }

    /// <summary>Points <c>snapshots/&lt;commit&gt;/&lt;file&gt;</c> at the blob with a relative symlink (as Python does).</summary>
    public string Link(string commit, string file, string etag)
    {
        string link = SnapshotFile(commit, file);
        Directory.CreateDirectory(Path.GetDirectoryName(link)!);
        string target = Path.GetRelativePath(Path.GetDirectoryName(link)!, BlobPath(etag));
        var existing = new FileInfo(link);
        if (existing.LinkTarget == target) return link;
        if (existing.Exists || existing.LinkTarget is not null) existing.Delete();
        try
        {
            File.CreateSymbolicLink(link, target);
        }
        catch (IOException)
        {
            File.Copy(BlobPath(etag), link, overwrite: true);   // file systems without symlinks: a copy, as huggingface_hub does
        }
        return link;
    }
}
