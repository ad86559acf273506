using PetalsSharp.Models;
using PetalsSharp.Server;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Balance;

public sealed class NumBlocksTests
{
    // llama-gqa: 46,208 parameters per block (186,680 bytes in f32 with 1% slack); its KV cache is
    // 2 × 2 kv heads × 16 × 4 bytes = 256 bytes per token, 2 MiB for the default 8192 tokens.
    static readonly ModelConfig Config = ModelConfigLoader.Load(TestData.Path("llama-gqa"));
    static readonly ServerOptions Options = new() { ModelDir = TestData.Path("llama-gqa"), NumBlocks = 1 };

    [Theory]
    [InlineData(5_000_000, 2)]        // 2 × 2,283,832 bytes fit, 3 do not
    [InlineData(100_000_000, 3)]      // capped at the model's blocks
    [InlineData(1000, 1)]             // a server always serves at least one block
    public void The_memory_budget_sets_the_number_of_blocks(long budget, int expected) =>
        Assert.Equal(expected, Options.BlocksForMemory(Config, budget));

    [Fact]
    public void Smaller_weights_and_caches_fit_more_blocks()
    {
        var small = Options with { WeightDtype = ScalarType.BFloat16, CacheTokens = 256 };
        Assert.Equal(3, small.BlocksForMemory(Config, 1_000_000));
        // A byte budget for the cache comes off the top and is shared by the span.
        Assert.Equal(1, (Options with { CacheBytes = 900_000 }).BlocksForMemory(Config, 1_200_000));
    }
}
