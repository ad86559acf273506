using System.Text.Json.Nodes;

namespace PetalsSharp.Models;

/// <summary>
/// Qwen2 / Qwen2.5 config with the transformers 4.45 defaults for absent keys. Its blocks are Llama's with biases on
/// q/k/v (none on o_proj or the MLP).
/// </summary>
/// <remarks>
/// Qwen2's optional sliding window (<c>use_sliding_window</c>, on layers from <c>max_window_layers</c> on) is refused:
/// every published Qwen2/2.5 checkpoint has it off, and it would need a window per layer where the cache has one per
/// span. With it off no layer slides, whatever <c>sliding_window</c> says; that key and <c>max_window_layers</c> are
/// kept only to be written back.
/// </remarks>
public sealed record Qwen2Config : RotaryConfig
{
    public bool UseSlidingWindow { get; init; }
    public int? SlidingWindow { get; init; }
    public int MaxWindowLayers { get; init; } = 28;

    public override IModelFamily Family => Qwen2Family.Instance;
    protected override string Architecture => "Qwen2ForCausalLM";

    public override void Validate(string source)
    {
        base.Validate(source);
        if (UseSlidingWindow)
            throw new ConfigException($"{source}: use_sliding_window true is not supported for qwen2 (sliding-window attention " +
                                      $"on layers {MaxWindowLayers} and up, window {SlidingWindow?.ToString() ?? "null"}); only " +
                                      "use_sliding_window false, as in every published Qwen2/Qwen2.5 checkpoint, is served");
    }

    protected override JsonObject OwnHfKeys()
    {
        var json = base.OwnHfKeys();
        json.Remove("head_dim");   // transformers 4.45 derives it; Qwen2 configs never carry it
        json["use_sliding_window"] = UseSlidingWindow;
        json["sliding_window"] = SlidingWindow;
        json["max_window_layers"] = MaxWindowLayers;
        return json;
    }

    internal static Qwen2Config Parse(JsonConfigReader r) => ReadShared(new Qwen2Config
    {
        IntermediateSize = r.Int("intermediate_size", 22016),
        UseSlidingWindow = r.Bool("use_sliding_window", false),
        SlidingWindow = r.Root.TryGetProperty("sliding_window", out _) ? r.IntOrNull("sliding_window") : 4096,
        MaxWindowLayers = r.Int("max_window_layers", 28),
    }, r, new("qwen2", Vocab: 151936, Hidden: 4096, Heads: 32, Layers: 32, MaxPositions: 32768, Tie: false, Bos: null, Eos: null),
        kvHeads: null, eps: 1e-6, theta: 10000.0);
}

/// <summary>Qwen2 / Qwen2.5: Llama's blocks with q/k/v biases, and Llama's ends (often with tied embeddings).</summary>
public sealed class Qwen2Family() : ModelFamily(Qwen2Config.Parse, "qwen2")
{
    public static readonly Qwen2Family Instance = new();

    protected override DecoderBlock Block(ModelConfig config, int index, TensorTable t) =>
        new LlamaBlock((Qwen2Config)config, RotaryBlock.Layer(t, index), qkvBias: true, outBias: false, mlpBias: false, slidingWindow: null);

    protected internal override ModelEnds Ends(ModelConfig config, TensorTable t) => LlamaFamily.Instance.Ends(config, t);

    public override ModelConfig CreateConfig(ModelShape s) => ModelConfig.FromShape(new Qwen2Config
    {
        IntermediateSize = s.IntermediateSize ?? (11 * s.HiddenSize / 2 + 63) / 64 * 64,   // Qwen2.5-7B's 18944 / 3584
        RmsNormEps = 1e-6, RopeTheta = 1e6,
    }, "qwen2", s);

    /// <summary>The Llama benchmark shape (hidden 768, 12 layers, 12/4 heads, MLP 2048, vocab 32000) with q/k/v biases.</summary>
    public override ModelConfig BenchmarkConfig() => CreateConfig(new ModelShape(768, 12, 12, 4, 2048, 32000, 2048, TieEmbeddings: false));
}
