namespace PetalsSharp.Benchmarks;

/// <summary>Folders of the repository the benchmarks run from, found from the output folder upwards.</summary>
static class RepoFiles
{
    /// <summary>
    /// The folder at <paramref name="relative"/> (from the repository root) that holds <paramref name="marker"/>; the
    /// output folder's depth depends on whether the build names a runtime identifier, so it is searched upwards.
    /// </summary>
    public static string Find(string relative, string marker, string hint)
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            var candidate = Path.Combine(d.FullName, relative);
            if (File.Exists(Path.Combine(candidate, marker))) return candidate;
        }
        throw new DirectoryNotFoundException($"{relative} not found above {AppContext.BaseDirectory}; {hint}");
    }
}
