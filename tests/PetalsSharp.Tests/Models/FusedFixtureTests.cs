using Xunit;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// On the real Llama fixtures (llama-gqa from tests data, the trained stories260K from ../shared/fixtures), greedy
/// decoding gives the same tokens on the fused path and on the reference, and every step's logits agree within 1e-4.
/// </summary>
public sealed class FusedFixtureTests
{
    public static TheoryData<string> Models() => new() { "llama-gqa", "stories260K" };

    static string? DirOf(string name) => name == "stories260K" ? Fixtures.Stories260KDir : TestData.Path(name);

    [SkippableTheory]
    [MemberData(nameof(Models))]
    public void Greedy_steps_have_the_same_logits_and_tokens(string name)
    {
        var dir = DirOf(name);
        Skip.If(dir is null, Fixtures.Stories260KSkipReason);
        FusedParity.GreedyMatches(dir!, name);
    }

    [SkippableTheory]
    [MemberData(nameof(Models))]
    public async Task Generation_gives_the_same_tokens_on_both_paths(string name)
    {
        var dir = DirOf(name);
        Skip.If(dir is null, Fixtures.Stories260KSkipReason);
        await FusedParity.GenerationMatches(dir!);
    }
}
