namespace PetalsSharp.Tests;

/// <summary>
/// Locates fixtures kept outside the repository. <c>shared/</c> sits beside the repository clone
/// (for example /work/shared next to /work/main), so it is found by walking up from the test binaries.
/// </summary>
public static class Fixtures
{
    /// <summary>Why stories260K tests are skipped when the folder is missing.</summary>
    public const string Stories260KSkipReason =
        "stories260K found neither at ../shared/fixtures/stories260K nor in src/PetalsSharp.Cli/DemoModel";

    // The shared fixture first (the reference all fixtures come from), then the copy the CLI ships for its demo.
    private static readonly Lazy<string?> Stories260K = new(() => FindShared(Path.Combine("fixtures", "stories260K"))
        ?? FindInRepository(Path.Combine("src", "PetalsSharp.Cli", "DemoModel", "stories260K")));

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

    /// <summary>Finds <c>&lt;relative&gt;</c> under the repository that holds the test binaries.</summary>
    static string? FindInRepository(string relative)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, relative);
            if (File.Exists(Path.Combine(candidate, "model.safetensors"))) return candidate;
        }
        return null;
    }
}
