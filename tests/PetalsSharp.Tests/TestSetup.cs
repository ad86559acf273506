using System.Runtime.CompilerServices;

namespace PetalsSharp.Tests;

internal static class TestSetup
{
    /// <summary>
    /// The same thread-pool floor as the CLI, so tests see the latencies users see; and a private cache folder
    /// (inherited by the server processes tests start) so tests never write into the user's ~/.cache.
    /// </summary>
    [ModuleInitializer]
    internal static void Initialize()
    {
        PetalsSharp.Runtime.Configure();
        if (Environment.GetEnvironmentVariable("PETALS_CACHE") is null)
            Environment.SetEnvironmentVariable("PETALS_CACHE", Path.Combine(Path.GetTempPath(), "petals-sharp-tests-cache"));
    }
}
