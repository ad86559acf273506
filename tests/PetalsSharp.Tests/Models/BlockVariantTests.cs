using PetalsSharp.Models;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// Falcon and BLOOM layouts the HF fixtures do not cover: each block must (a) decode incrementally exactly as it
/// runs the full sequence and (b) equal <see cref="BlockReference"/>'s head-by-head restatement.
/// </summary>
public sealed class BlockVariantTests
{
    public static TheoryData<string, string> Falcons => new()
    {
        { "7B multi-query, parallel, rotary", """{"hidden_size":32,"num_attention_heads":4,"ffn_hidden_size":64,"multi_query":true,"parallel_attn":true}""" },
        { "7B multi-head, sequential, biases", """{"hidden_size":32,"n_head":4,"ffn_hidden_size":48,"multi_query":false,"parallel_attn":false,"bias":true}""" },
        { "7B multi-query, parallel, ALiBi, biases", """{"hidden_size":48,"num_attention_heads":6,"multi_query":true,"alibi":true,"bias":true}""" },
        { "7B multi-head, sequential, ALiBi", """{"hidden_size":40,"num_attention_heads":5,"multi_query":false,"parallel_attn":false,"alibi":true}""" },
        { "40B one shared norm, biases", """{"hidden_size":32,"num_attention_heads":4,"num_kv_heads":2,"new_decoder_architecture":true,"num_ln_in_parallel_attn":1,"bias":true}""" },
        { "40B two norms, ALiBi, 6/3 heads", """{"hidden_size":48,"num_attention_heads":6,"num_kv_heads":3,"new_decoder_architecture":true,"alibi":true,"rope_theta":500.0}""" },
        { "legacy RefinedWeb (40B)", """{"model_type":"RefinedWeb","n_embed":32,"n_head":4,"n_head_kv":2,"n_layer":1}""" },
        { "legacy RefinedWebModel (7B)", """{"model_type":"RefinedWebModel","n_embed":32,"n_head":4,"n_layer":1,"multi_query":true,"parallel_attn":true}""" },
    };

    public static TheoryData<string, string> Blooms => new()
    {
        { "5 heads", """{"hidden_size":40,"n_head":5}""" },
        { "12 heads, residual after the norm", """{"hidden_size":48,"n_head":12,"apply_residual_connection_post_layernorm":true}""" },
        { "8 heads", """{"hidden_size":32,"num_attention_heads":8}""" },
    };

    static ModelConfig Config(string json, string modelType)
    {
        var node = System.Text.Json.Nodes.JsonNode.Parse(json)!.AsObject();
        node["model_type"] ??= modelType;
        node["n_layer"] ??= 1;
        node["vocab_size"] ??= 64;
        return ModelConfigLoader.Parse(node.ToJsonString());
    }

    [Theory]
    [MemberData(nameof(Falcons))]
    public void Falcon_block_equals_the_reference_and_decodes_incrementally(string layout, string json)
    {
        using var scope = NewDisposeScope();
        var c = (FalconConfig)Config(json, "falcon");
        var w = BlockReference.RandomWeights(c, seed: 7);
        var block = c.Family.CreateBlock(c, 0, Clone(w));   // a Parameter takes over its tensor's handle
        var x = randn(2, 6, c.HiddenSize, generator: new Generator(3));
        var full = block.Forward(x, new StepContext(2, 6));
        AssertClose(BlockReference.Falcon(c, w, x), full, $"{layout}: vs reference");
        AssertClose(full, Incremental(block, x), $"{layout}: incremental");
    }

    [Theory]
    [MemberData(nameof(Blooms))]
    public void Bloom_block_equals_the_reference_and_decodes_incrementally(string layout, string json)
    {
        using var scope = NewDisposeScope();
        var c = (BloomConfig)Config(json, "bloom");
        var w = BlockReference.RandomWeights(c, seed: 8);
        var block = c.Family.CreateBlock(c, 0, Clone(w));   // a Parameter takes over its tensor's handle
        var x = randn(2, 6, c.HiddenSize, generator: new Generator(4));
        var full = block.Forward(x, new StepContext(2, 6));
        AssertClose(BlockReference.Bloom(c, w, x), full, $"{layout}: vs reference");
        AssertClose(full, Incremental(block, x), $"{layout}: incremental");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(5)]
    [InlineData(6)]
    [InlineData(8)]
    [InlineData(12)]
    [InlineData(20)]
    [InlineData(71)]
    public void Alibi_slopes_follow_the_paper_for_any_head_count(int heads)
    {
        var expected = BlockReference.PaperSlopes(heads);
        var actual = Alibi.Slopes(heads);
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < heads; i++)
            Assert.True(Math.Abs(actual[i] - expected[i]) <= 1e-6 * expected[i], $"slope {i} of {heads}: {actual[i]} vs {expected[i]}");
    }

    [Fact]
    public void Alibi_slopes_for_six_heads_are_the_known_values()
    {
        // 4 slopes of 2^(-2i) then the odd powers of 2^(-1): 1/4, 1/16, 1/64, 1/256, then 1/2, 1/8.
        Assert.Equal([0.25f, 0.0625f, 0.015625f, 0.00390625f, 0.5f, 0.125f], Alibi.Slopes(6));
    }

    [Fact]
    public void Alibi_bias_counts_positions_from_each_rows_first_real_token()
    {
        using var scope = NewDisposeScope();
        var ctx = new StepContext(2, 1, pastLength: 4, leftPadding: [0, 2]);
        var bias = Alibi.Bias(ctx, 2, ScalarType.Float32);                                       // [2, 2, 1, 5]
        Assert.Equal([2L, 2, 1, 5], bias.shape);
        // Two heads: slopes 1/16 and 1/256; the second row's first two keys are padding.
        Assert.Equal([0f, 0.0625f, 0.125f, 0.1875f, 0.25f], bias[0, 0, 0].data<float>().ToArray());
        Assert.Equal([0f, 0f, 0f, 0.0625f, 0.125f], bias[1, 0, 0].data<float>().ToArray());
        Assert.Equal([0f, 0f, 0f, 1 / 256f, 2 / 256f], bias[1, 1, 0].data<float>().ToArray());
    }

    static Dictionary<string, Tensor> Clone(Dictionary<string, Tensor> w) => w.ToDictionary(e => e.Key, e => e.Value.clone());

    /// <summary>The same 6 tokens as steps of 3, 1 and 2 through a cache.</summary>
    static Tensor Incremental(DecoderBlock block, Tensor x)
    {
        using var cache = block.AllocateCache(2, 8);
        var outputs = new List<Tensor>();
        int past = 0;
        foreach (var n in new[] { 3, 1, 2 })
        {
            outputs.Add(block.Forward(x.narrow(1, past, n), new StepContext(2, n, past), cache));
            past += n;
        }
        return cat(outputs, 1);
    }

    static void AssertClose(Tensor expected, Tensor actual, string what)
    {
        var diff = TensorAssert.MaxAbsDiff(expected, actual);
        Assert.True(diff <= 2e-5, $"{what}: max |diff| {diff:E2}");
    }
}
