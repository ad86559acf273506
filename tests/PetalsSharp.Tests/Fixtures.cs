namespace PetalsSharp.Tests;

/// <summary>
/// Locates fixtures kept outside the repository. <c>shared/</c> sits beside the repository clone
/// (for example /work/shared next to /work/main), so it is found by walking up from the test binaries.
/// </summary>
public static class Fixtures
{
    /// <summary>Why stories260K tests are skipped when the folder is missing.</summary>
    public const string Stories260KSkipReason =
        "stories260K fixture not found at ../shared/fixtures/stories260K (weights are not committed)";

    private static readonly Lazy<string?> Stories260K = new(() => FindShared(Path.Combine("fixtures", "stories260K")));

    /// <summary>The stories260K folder, or <c>null</c> when it is not present.</summary>
    public static string? Stories260KDir => Stories260K.Value;

    /// <summary>Finds <c>shared/&lt;relative&gt;</c> beside any ancestor of the test binaries' folder.</summary>
    public static string? FindShared(string relative)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "shared", relative);
            if (Directory.Exists(candidate))
            {
                return candidate;
            }
        }

        return null;
    }
}
