using PetalsSharp.Client;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Server;
using Xunit;

namespace PetalsSharp.Tests.Generation;

/// <summary>
/// Speculative greedy decoding gives exactly the reference continuations of stories260K, through two server processes,
/// with the model itself as the draft (every draft accepted) and with prompt lookup; and it takes fewer steps through
/// the servers than it produces tokens.
/// </summary>
[Trait("Category", "Processes")]
public sealed class SpeculativeTests
{
    [SkippableFact]
    public async Task Speculative_greedy_through_two_servers_equals_the_reference_in_fewer_steps()
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        var dir = Fixtures.Stories260KDir!;
        using var reference = Reference.LoadFrom(dir);
        int layers = ModelConfigLoader.Load(dir).NumLayers, half = layers / 2;
        var servers = await Task.WhenAll(ServerProcess.StartAsync(dir, 0, half), ServerProcess.StartAsync(dir, half, layers));
        try
        {
            using var lm = await DistributedModel.ConnectAsync(dir, servers.Select(s => s.Address));
            using var draftLm = CausalLM.Load(dir);
            await using var self = new DraftModel(draftLm);
            await using var lookup = new PromptLookupDraft();
            foreach (var c in reference["continuations"].EnumerateArray())
            {
                var prompt = c.GetProperty("prompt").GetString()!;
                var expected = c.GetProperty("new_token_ids").EnumerateArray().Select(x => x.GetInt32()).ToList();
                foreach (var (name, draft) in new (string, IDraftSource)[] { ("self", self), ("prompt lookup", lookup) })
                {
                    var result = await lm.GenerateAsync([prompt], new GenerationOptions
                    {
                        MaxNewTokens = 40, IgnoreEos = true, Speculative = new SpeculativeOptions(draft),
                    });
                    Assert.Equal(expected, result.NewTokens[0]);
                    Assert.Equal(c.GetProperty("new_text").GetString(), result.Texts[0]);
                    var stats = result.Speculation!;
                    Assert.True(stats.Steps <= expected.Count, $"{name}: {stats.Steps} steps for {expected.Count} tokens");
                    if (name == "self")
                    {
                        Assert.Equal(stats.Proposed, stats.Accepted);   // the model agrees with itself
                        Assert.True(stats.Steps < expected.Count / 3, $"self-draft took {stats.Steps} steps for {expected.Count} tokens");
                    }
                }
            }

            // Prompt lookup wins where the text repeats itself: the same tokens as plain greedy in fewer steps.
            const string repetitive = "Lily and Tom went to the park. Lily and Tom went to the park. Lily and Tom went to the park.";
            var plain = await lm.GenerateAsync([repetitive], new GenerationOptions { MaxNewTokens = 40, IgnoreEos = true });
            var looked = await lm.GenerateAsync([repetitive], new GenerationOptions
            {
                MaxNewTokens = 40, IgnoreEos = true, Speculative = new SpeculativeOptions(lookup),
            });
            Assert.Equal(plain.NewTokens[0], looked.NewTokens[0]);
            Assert.True(looked.Speculation!.Steps < 40, $"prompt lookup took {looked.Speculation.Steps} steps: {looked.Speculation}");
        }
        finally
        {
            foreach (var s in servers) s.Dispose();
        }
    }

    [SkippableFact]
    public async Task Speculative_sampling_runs_and_a_seed_reproduces_it()
    {
        Skip.If(Fixtures.Stories260KDir is null, Fixtures.Stories260KSkipReason);
        using var lm = CausalLM.Load(Fixtures.Stories260KDir!);
        using var draftLm = CausalLM.Load(Fixtures.Stories260KDir!);
        await using var draft = new DraftModel(draftLm);
        var options = new GenerationOptions
        {
            MaxNewTokens = 30, DoSample = true, Temperature = 0.8, TopK = 40, Seed = 7, IgnoreEos = true,
            Speculative = new SpeculativeOptions(draft, DraftTokens: 3),
        };
        var a = await lm.GenerateAsync(["Once upon a time"], options);
        var b = await lm.GenerateAsync(["Once upon a time"], options);
        Assert.Equal(30, a.NewTokens[0].Count);
        Assert.Equal(a.NewTokens[0], b.NewTokens[0]);
        Assert.True(a.Speculation!.Accepted > 0);
    }

    [Fact]
    public async Task What_speculation_cannot_do_is_refused_by_name()
    {
        using var lm = CausalLM.Load(TestData.Path("llama-gqa"));
        await using var lookup = new PromptLookupDraft();
        var spec = new SpeculativeOptions(lookup);
        var e = await Assert.ThrowsAsync<NotSupportedException>(() =>
            lm.GenerateAsync([[1, 2, 3], [4, 5]], new GenerationOptions { Speculative = spec }));
        Assert.Contains("one prompt at a time", e.Message);
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() =>
            lm.GenerateAsync([[1, 2, 3]], new GenerationOptions { Speculative = spec with { DraftTokens = 20 } }));
    }
}
