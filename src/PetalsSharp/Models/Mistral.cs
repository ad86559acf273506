using System.Text.Json.Nodes;

namespace PetalsSharp.Models;

/// <summary>
/// Mistral config with the transformers 4.45 defaults (Mistral 7B v0.1) for absent keys. Its blocks are Llama's,
/// with attention within <see cref="SlidingWindow"/>.
/// </summary>
public sealed record MistralConfig : RotaryConfig
{
    /// <summary>
    /// Each query sees at most its last this-many keys, itself included (<c>p - W &lt; j &lt;= p</c>, as transformers'
    /// eager attention); null = full causal attention (Mistral 7B v0.2 and later).
    /// </summary>
    public int? SlidingWindow { get; init; }

    public override IModelFamily Family => MistralFamily.Instance;
    public override int? AttentionWindow => SlidingWindow;
    protected override string Architecture => "MistralForCausalLM";

    public override void Validate(string source)
    {
        base.Validate(source);
        if (SlidingWindow is <= 0) throw new ConfigException($"{source}: sliding_window must be positive or null (got {SlidingWindow})");
    }

    protected override JsonObject OwnHfKeys()
    {
        var json = base.OwnHfKeys();
        json["sliding_window"] = SlidingWindow;
        return json;
    }

    // An absent sliding_window is transformers' default of 4096; an explicit null turns the window off.
    internal static MistralConfig Parse(JsonConfigReader r) => ReadShared(new MistralConfig
    {
        IntermediateSize = r.Int("intermediate_size", 14336),
        SlidingWindow = r.Root.TryGetProperty("sliding_window", out _) ? r.IntOrNull("sliding_window") : 4096,
    }, r, new("mistral", Vocab: 32000, Hidden: 4096, Heads: 32, Layers: 32, MaxPositions: 4096 * 32, Tie: false, Bos: 1, Eos: 2),
        kvHeads: 8, eps: 1e-6, theta: 10000.0);
}

/// <summary>Mistral: Llama's blocks and ends, attention within a sliding window.</summary>
public sealed class MistralFamily() : ModelFamily(MistralConfig.Parse, "mistral")
{
    public static readonly MistralFamily Instance = new();

    protected override DecoderBlock Block(ModelConfig config, int index, TensorTable t)
    {
        var c = (MistralConfig)config;
        return new LlamaBlock(c, RotaryBlock.Layer(t, index), qkvBias: false, outBias: false, mlpBias: false, c.SlidingWindow);
    }

    protected internal override ModelEnds Ends(ModelConfig config, TensorTable t) => LlamaFamily.Instance.Ends(config, t);

    public override ModelConfig CreateConfig(ModelShape s) => ModelConfig.FromShape(new MistralConfig
    {
        IntermediateSize = s.IntermediateSize ?? (7 * s.HiddenSize / 2 + 63) / 64 * 64,   // Mistral 7B's 3.5×
        RmsNormEps = 1e-5, RopeTheta = 1e6, SlidingWindow = 4096,
    }, "mistral", s);

    /// <summary>The Llama benchmark shape (hidden 768, 12 layers, 12/4 heads, MLP 2048, vocab 32000) with a 4096 window.</summary>
    public override ModelConfig BenchmarkConfig() => CreateConfig(new ModelShape(768, 12, 12, 4, 2048, 32000, 2048, TieEmbeddings: false));
}
