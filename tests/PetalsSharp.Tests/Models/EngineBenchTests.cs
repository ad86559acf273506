using PetalsSharp.Models;
using PetalsSharp.Models.Bench;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models;

/// <summary>What <c>petals bench</c> counts: the weight bytes a decoded token reads, and the machine's read rate.</summary>
public sealed class EngineBenchTests
{
    [Fact]
    public void A_decoded_token_reads_the_blocks_the_final_norm_and_the_head_but_not_the_embeddings()
    {
        using var lm = CausalLM.Load(TestData.Path("llama-gqa"));
        var blocks = ((LocalBlockStack)lm.Blocks).Blocks;
        long embedding = lm.Config.VocabSize * lm.Config.HiddenSize * 4L;   // untied f32 [V, H]

        Assert.Equal(WeightReads.Held(blocks, lm.Ends) - embedding, WeightReads.PerDecodedToken(lm.Config, blocks, lm.Ends));
        Assert.Equal(WeightReads.Held(blocks), WeightReads.PerDecodedToken(lm.Config, blocks));
    }

    [Fact]
    public void A_mixtral_token_reads_only_its_top_k_experts()
    {
        using var lm = CausalLM.Load(TestData.Path("mixtral"));
        var c = (MixtralConfig)lm.Config;
        var blocks = ((LocalBlockStack)lm.Blocks).Blocks;
        long experts = c.NumLayers * c.NumLocalExperts * 3L * c.HiddenSize * c.IntermediateSize * 4;   // w1, w2, w3 in f32
        double unread = experts * (1 - (double)c.NumExpertsPerTok / c.NumLocalExperts);

        Assert.Equal(WeightReads.Held(blocks) - (long)Math.Round(unread), WeightReads.PerDecodedToken(c, blocks));
    }

    [Fact]
    public void Weights_are_counted_in_the_dtype_they_are_stored_in()
    {
        using var f32 = CausalLM.Load(TestData.Path("llama-gqa"));
        using var bf16 = CausalLM.Load(TestData.Path("llama-gqa"), new ModelLoadOptions(ScalarType.BFloat16));
        long PerToken(CausalLM lm) => WeightReads.PerDecodedToken(lm.Config, ((LocalBlockStack)lm.Blocks).Blocks, lm.Ends);

        // Matrices halve; norms may stay f32, so the whole is at least half.
        Assert.InRange(PerToken(bf16), PerToken(f32) / 2, PerToken(f32) * 6 / 10);
    }

    [Fact]
    public void The_bandwidth_probe_gives_positive_rates()
    {
        var bandwidth = MemoryBandwidth.Measure(threads: 2, bytes: 4L << 20);
        Assert.True(bandwidth.TorchSum > 0 && bandwidth.HostRead > 0, bandwidth.ToString());
        Assert.Equal(Math.Max(bandwidth.TorchSum, bandwidth.HostRead), bandwidth.Best);
    }
}
