using System.Runtime.CompilerServices;

namespace PetalsSharp.Tests;

internal static class TestSetup
{
    /// <summary>The same thread-pool floor as the CLI, so tests see the latencies users see.</summary>
    [ModuleInitializer]
    internal static void Initialize() => PetalsSharp.Runtime.Configure();
}
