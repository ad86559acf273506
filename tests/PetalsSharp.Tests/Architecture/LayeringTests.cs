using Xunit;

namespace PetalsSharp.Tests.Architecture;

/// <summary>
/// The namespace floors hold in the compiled assemblies: Wire/Text/Dht → Models → Swarm/Generation/Hub →
/// Client | Server → Training → Api → Cli, nothing upward, and Client and Server never use each other.
/// </summary>
public sealed class LayeringTests
{
    static readonly string[] Assemblies = ["PetalsSharp.dll", "PetalsSharp.Api.dll", "petals.dll"];

    [Fact]
    public void No_area_uses_one_above_it_or_beside_it()
    {
        var edges = Assemblies.SelectMany(a => Layering.Edges(Path.Combine(AppContext.BaseDirectory, a))).ToList();
        Assert.True(edges.Count > 1000, $"only {edges.Count} edges were read: is the IL walk broken?");
        var violations = Layering.Violations(edges);
        Assert.True(violations.Count == 0, "upward references:\n" + string.Join("\n", violations));
    }

    [Fact]
    public void Every_area_of_the_library_has_a_floor()
    {
        var areas = Assemblies.SelectMany(a => Layering.Edges(Path.Combine(AppContext.BaseDirectory, a)))
            .Select(e => Layering.Area(e.From[..Math.Max(0, e.From.LastIndexOf('.'))]))
            .OfType<string>().Distinct().ToList();
        Assert.All(areas, a => Assert.True(Layering.Allowed.ContainsKey(a), $"{a} has no floor in Layering.Allowed"));
    }

    [Theory]
    [InlineData("PetalsSharp.Server.BlockServer", "PetalsSharp.Client.RemotePool", true)]
    [InlineData("PetalsSharp.Client.RemotePool", "PetalsSharp.Server.BlockServer", true)]
    [InlineData("PetalsSharp.Models.Llama", "PetalsSharp.Swarm.RoutePlanner", true)]
    [InlineData("PetalsSharp.Wire.TensorCodec", "PetalsSharp.Models.Weights.NativeMemory", true)]
    [InlineData("PetalsSharp.Text.Tokenizers.HfJson", "PetalsSharp.Text.Templates.ChatTemplate", false)]
    [InlineData("PetalsSharp.Training.Trainer", "PetalsSharp.Client.RemoteSequential", false)]
    [InlineData("PetalsSharp.Server.BlockServer", "TorchSharp.torch", false)]
    public void The_rule_flags_upward_and_sideways_uses(string from, string to, bool flagged) =>
        Assert.Equal(flagged, Layering.Violations([new Layering.Edge(from, to)]).Count == 1);
}
