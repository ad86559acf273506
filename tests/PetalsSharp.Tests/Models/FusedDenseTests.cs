using System.Text.Json.Nodes;
using PetalsSharp.Models;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// The fused Falcon and BLOOM decode paths are pinned to the TorchSharp reference with <see cref="FusedParity"/>'s
/// script (a prefix, then 1 and 2 tokens, a rollback, beam reorders, left padding): on the HF fixtures (falcon-new: the
/// 40B layout, 8 query over 2 KV heads; bloom: 6 heads, ALiBi) per weight dtype with and without a LoRA adapter, and on
/// random checkpoints of every other layout (Falcon 7B multi-query and multi-head, sequential, biases, ALiBi; BLOOM's
/// odd head counts and post-norm residual).
/// </summary>
public sealed class FusedDenseTests
{
    public static TheoryData<string, ScalarType, bool> Fixtures()
    {
        var data = new TheoryData<string, ScalarType, bool>();
        foreach (var fixture in new[] { "falcon-new", "bloom" })
            foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16, ScalarType.Float16 })
                foreach (var adapter in new[] { false, true })
                    data.Add(fixture, dtype, adapter);
        return data;
    }

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void Fixture_session_steps_match_the_reference(string fixture, ScalarType dtype, bool withAdapter) =>
        FusedParity.RunScript(TestData.Path(fixture), dtype, leftPadding: [0, 2], FusedParity.Rtol(dtype), withAdapter ? fixture : null);

    [Theory]
    [InlineData("falcon-new")]
    [InlineData("bloom")]
    public void Fixtures_without_left_padding_too(string fixture) =>
        FusedParity.RunScript(TestData.Path(fixture), ScalarType.Float32, leftPadding: null);

    [Theory]
    [MemberData(nameof(BlockVariantTests.Falcons), MemberType = typeof(BlockVariantTests))]
    public void Falcon_layouts_match_the_reference(string layout, string json) => RunLayout(layout, json, "falcon");

    [Theory]
    [MemberData(nameof(BlockVariantTests.Blooms), MemberType = typeof(BlockVariantTests))]
    public void Bloom_layouts_match_the_reference(string layout, string json) => RunLayout(layout, json, "bloom");

    /// <summary>Writes a two-block random checkpoint of <paramref name="json"/>'s layout and runs the script on it in f32 and bf16.</summary>
    static void RunLayout(string layout, string json, string modelType)
    {
        var node = JsonNode.Parse(json)!.AsObject();
        node["model_type"] ??= modelType;
        node.Remove("n_layer");
        node["num_hidden_layers"] = 2;
        node["vocab_size"] ??= 64;
        var config = ModelConfigLoader.Parse(node.ToJsonString());
        FusedParity.OnRandomCheckpoint(config, seed: 5, dir =>
        {
            foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
            {
                try
                {
                    FusedParity.RunScript(dir, dtype, leftPadding: [2, 0], FusedParity.Rtol(dtype));
                }
                catch (Xunit.Sdk.XunitException e)
                {
                    throw new Xunit.Sdk.XunitException($"{layout}, {dtype}: {e.Message}");
                }
            }
        });
    }
}
