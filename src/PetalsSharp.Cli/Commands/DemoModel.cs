using System.Security.Cryptography;

namespace PetalsSharp.Cli.Commands;

/// <summary>
/// The demo's built-in model: the trained "stories260K" from llama2.c (Andrej Karpathy, MIT License; its LICENSE is
/// written beside the weights), embedded in petals.dll. Servers memory-map weights from a folder, so the files are
/// written once under the cache and reused.
/// </summary>
public static class DemoModel
{
    /// <summary>The folder name, which is also the model's name in the DHT.</summary>
    public const string Name = "stories260K";

    /// <summary>The prompt whose greedy continuation is the one llama2.c documents for this model.</summary>
    public const string Prompt = "Once upon a time";

    /// <summary>Tokens in that documented continuation.</summary>
    public const int MaxNewTokens = 40;

    const string ResourcePrefix = "DemoModel/" + Name + "/";

    /// <summary>The model folder in the cache, written from the embedded files if this build's copy is not there yet.</summary>
    public static string Ensure()
    {
        var assembly = typeof(DemoModel).Assembly;
        var names = assembly.GetManifestResourceNames().Where(n => n.StartsWith(ResourcePrefix, StringComparison.Ordinal))
            .Order(StringComparer.Ordinal).ToList();
        if (!names.Contains(ResourcePrefix + "model.safetensors"))
            throw new CliException("this build of petals has no built-in demo model; pass --model DIR");
        var files = names.Select(n => (Name: n[ResourcePrefix.Length..], Bytes: Read(assembly, n))).ToList();
        // Named by content: another PetalsSharp version with other files never reads a stale or half-updated copy.
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var (name, bytes) in files)
        {
            hash.AppendData(System.Text.Encoding.UTF8.GetBytes(name + "\n"));
            hash.AppendData(bytes);
        }
        var version = Convert.ToHexStringLower(hash.GetHashAndReset())[..16];
        var home = Path.Combine(CacheRoot(), "demo-models", version);
        var dir = Path.Combine(home, Name);
        if (IsComplete(dir, files)) return dir;
        // A damaged copy (a file deleted or truncated by hand) is replaced, never reused.
        if (Directory.Exists(home)) TryDelete(home);

        // Written aside under a unique name and renamed in whole (atomic on one file system), so concurrent demos
        // or an interrupted one never leave a partial folder: the first rename wins, the others drop their copy.
        var tmp = $"{home}.tmp-{Guid.NewGuid():N}";
        Directory.CreateDirectory(Path.Combine(tmp, Name));
        foreach (var (name, bytes) in files) File.WriteAllBytes(Path.Combine(tmp, Name, name), bytes);
        try { Directory.Move(tmp, home); }
        catch (IOException) { TryDelete(tmp); }
        if (!IsComplete(dir, files)) throw new CliException($"could not write the demo model to {home}");
        return dir;
    }

    static bool IsComplete(string dir, List<(string Name, byte[] Bytes)> files) =>
        files.All(f => new FileInfo(Path.Combine(dir, f.Name)) is { Exists: true } info && info.Length == f.Bytes.Length);

    static void TryDelete(string path)
    {
        try { Directory.Delete(path, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    static string CacheRoot() => PetalsSharp.Runtime.CacheDirectory;

    static byte[] Read(System.Reflection.Assembly assembly, string name)
    {
        using var stream = assembly.GetManifestResourceStream(name)!;
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    }
}
