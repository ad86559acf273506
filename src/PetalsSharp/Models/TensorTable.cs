using PetalsSharp.Models.Quant;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace PetalsSharp.Models;

/// <summary>
/// Where a block or the ends take their checkpoint tensors, so each tensor is named once: <see cref="Take"/> records
/// its name, shape and init rule and returns it. Over loaded weights it returns them, shape-checked (the explicit,
/// asserted checkpoint mapping of nanoGPT); over nothing it returns storage-free tensors on the meta device, so
/// building a block on <see cref="ShapesOnly"/> lists the tensors the loader must read without reading any.
/// </summary>
public sealed class TensorTable
{
    static readonly Device Meta = new(DeviceType.META);

    readonly IReadOnlyDictionary<string, Tensor>? _weights;
    readonly QuantFormat _quant;
    readonly List<TensorSpec> _specs;
    readonly List<string> _linears;
    readonly string _prefix;

    TensorTable(IReadOnlyDictionary<string, Tensor>? weights, List<TensorSpec> specs, List<string> linears, string prefix, int block,
        QuantFormat quant = QuantFormat.None)
    {
        _weights = weights;
        _quant = quant;
        _specs = specs;
        _linears = linears;
        _prefix = prefix;
        Block = block;
    }

    /// <summary>
    /// A table over loaded tensors, keyed by checkpoint name. With <paramref name="quant"/>, the tensors a load packs
    /// (<see cref="TensorSpec.QuantizedBy"/>) arrive as uint8 <c>[rows, RowBytes]</c> in that format.
    /// </summary>
    public static TensorTable Over(IReadOnlyDictionary<string, Tensor> weights, QuantFormat quant = QuantFormat.None) =>
        new(weights, [], [], "", -1, quant);

    /// <summary>A table that only records what is taken.</summary>
    public static TensorTable ShapesOnly() => new(null, [], [], "", -1);

    /// <summary>The same table for block <paramref name="index"/>, whose names start with <paramref name="prefix"/>.</summary>
    public TensorTable ForBlock(int index, string prefix) => new(_weights, _specs, _linears, _prefix + prefix, index, _quant);

    /// <summary>The block format packed tensors of this table are in.</summary>
    public QuantFormat Quant => _quant;

    /// <summary>The block index an adapter addresses this table's linears by (-1 outside a block).</summary>
    public int Block { get; }

    /// <summary>Every tensor taken so far, in order, with its full checkpoint name.</summary>
    public IReadOnlyList<TensorSpec> Specs => _specs;

    /// <summary>Module paths (inside the block) of the linears taken so far: what a LoRA adapter may target.</summary>
    public IReadOnlyList<string> Linears => _linears;

    /// <summary>The tensor <paramref name="name"/> (under the table's prefix), which must have <paramref name="shape"/>.</summary>
    public Parameter Take(string name, long[] shape, TensorRole role, double gain = 1.5, bool exact = false)
    {
        var spec = new TensorSpec(_prefix + name, shape, role, gain, exact);
        _specs.Add(spec);
        if (_weights is null) return Ops.Frozen(empty(shape, device: Meta));
        if (!_weights.TryGetValue(spec.Name, out var t))
            throw new KeyNotFoundException($"tensor '{spec.Name}' is missing from the weights given");
        if (t.dtype == ScalarType.Byte && spec.QuantizedBy(_quant))
        {
            long[] packed = [shape[0], _quant.RowBytes(shape[1])];
            if (!t.shape.SequenceEqual(packed))
                throw new ArgumentException($"packed tensor '{spec.Name}' has shape [{string.Join(", ", t.shape)}], {_quant.Name()} needs [{string.Join(", ", packed)}]");
            return Ops.Frozen(t);
        }
        if (!t.shape.SequenceEqual(shape))
            throw new ArgumentException($"tensor '{spec.Name}' has shape [{string.Join(", ", t.shape)}], the model needs [{string.Join(", ", shape)}]");
        return Ops.Frozen(t);
    }

    /// <summary>
    /// The linear <paramref name="module"/>: <c>.weight [out, in]</c> and, with <paramref name="bias"/>,
    /// <c>.bias [out]</c>. The gain only shapes random init (<see cref="TensorRole.Matrix"/>).
    /// </summary>
    /// <remarks>With <c>exact</c> the weight is never quantized (see <see cref="TensorSpec.Exact"/>).</remarks>
    public BlockLinear Linear(string module, long outFeatures, long inFeatures, bool bias = false, double gain = 1.5, bool exact = false)
    {
        _linears.Add(module);
        var weight = Take(module + ".weight", [outFeatures, inFeatures], TensorRole.Matrix, gain, exact);
        var packed = weight.dtype == ScalarType.Byte ? _quant : QuantFormat.None;
        return new BlockLinear(Block, module, weight, bias ? Take(module + ".bias", [outFeatures], TensorRole.Bias) : null, packed, inFeatures);
    }

    /// <summary>The norm <paramref name="name"/>: a <c>.weight [size]</c> scale, and a <c>.bias [size]</c> shift unless RMS.</summary>
    public Norm Norm(string name, long size, double eps, bool rms) => new(
        Take(name + ".weight", [size], TensorRole.NormScale),
        rms ? null : Take(name + ".bias", [size], TensorRole.Bias), eps, rms);
}

/// <summary>
/// A family whose blocks and ends take their tensors from a <see cref="TensorTable"/>: the tensor lists and LoRA
/// targets come from building them on shapes only, so the builders are the one place that names each tensor.
/// </summary>
public abstract class ModelFamily(Func<JsonConfigReader, ModelConfig> parse, params string[] modelTypes) : IModelFamily, Lora.ILoraTargets
{
    public IReadOnlyList<string> ModelTypes => modelTypes;
    public ModelConfig ParseConfig(JsonConfigReader reader) => parse(reader);
    public abstract ModelConfig CreateConfig(ModelShape shape);
    public abstract ModelConfig BenchmarkConfig();

    /// <summary>Builds block <paramref name="index"/>, taking its tensors from <paramref name="t"/>.</summary>
    protected abstract DecoderBlock Block(ModelConfig config, int index, TensorTable t);

    /// <summary>Builds the client-side ends, taking their tensors from <paramref name="t"/>.</summary>
    protected internal abstract ModelEnds Ends(ModelConfig config, TensorTable t);

    public IReadOnlyList<TensorSpec> BlockTensors(ModelConfig config, int index) => Shapes(t => Block(config, index, t)).Specs;

    public IReadOnlyList<TensorSpec> EndTensors(ModelConfig config) => Shapes(t => Ends(config, t)).Specs;

    public DecoderBlock CreateBlock(ModelConfig config, int index, IReadOnlyDictionary<string, Tensor> weights, QuantFormat quant = QuantFormat.None) =>
        Block(config, index, TensorTable.Over(weights, quant));

    public ModelEnds CreateEnds(ModelConfig config, IReadOnlyDictionary<string, Tensor> weights, QuantFormat quant = QuantFormat.None) =>
        Ends(config, TensorTable.Over(weights, quant));

    /// <summary>Every linear of a block: an adapter may target any of them.</summary>
    public IReadOnlyList<string> LoraModules(ModelConfig config) => Shapes(t => Block(config, 0, t)).Linears;

    static TensorTable Shapes(Func<TensorTable, nn.Module> build)
    {
        var t = TensorTable.ShapesOnly();
        build(t).Dispose();
        return t;
    }
}
