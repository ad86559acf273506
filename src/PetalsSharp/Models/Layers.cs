using System.Text.Json.Nodes;
using PetalsSharp.Models.Quant;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PetalsSharp.Models;

/// <summary>
/// Building blocks shared by the families. Weights may be stored in bf16/f16 to halve memory, but this CPU
/// computes 16-bit matmuls at about 1 GFLOP/s, so every op upcasts the weight to the activation dtype.
/// </summary>
public static class Ops
{
    /// <summary>Frozen parameter over a loaded tensor (autograd flows to inputs, never to served weights).</summary>
    public static Parameter Frozen(Tensor t) => new(t, requires_grad: false);

    /// <summary>
    /// <c>x [..., in] @ w[out, in]^T + b</c>, upcasting a 16-bit stored weight to x's dtype one tile at a time
    /// (<see cref="TiledLinear"/>). Under autograd the whole weight is upcast at once as before: backward keeps
    /// every upcast tile alive until it runs, so tiling would save nothing there. Only a single row takes the C#
    /// kernel here (cached steps of up to 16 rows run on the fused path): a cache-free forward of several rows must give
    /// the activations a server's autograd recompute gives, or training gradients drift with the summation order
    /// (1.6e-4 on DistributedParityTests when 2–16 rows went through MatRows).
    /// </summary>
    public static Tensor Linear(Tensor x, Tensor w, Tensor? b = null)
    {
        if (x.NumberOfElements == x.shape[^1] && Kernels.MatRowsLinear.TryLinear(x, w, b, out var y)) return y;
        if (w.dtype == x.dtype || x.requires_grad || w.requires_grad || (b is not null && b.requires_grad))
            return F.linear(x, Cast(w, x), b is null ? null : Cast(b, x));                    // [..., out]
        return TiledLinear.Forward(x, w, b);                                                  // [..., out]
    }

    public static Tensor Cast(Tensor w, Tensor like) => w.dtype == like.dtype ? w : w.to(like.dtype);

    public static Tensor RmsNorm(Tensor x, Tensor weight, double eps)
    {
        var xf = x.to(ScalarType.Float32);                                   // [..., H]
        var normed = xf * xf.pow(2).mean([-1L], keepdim: true).add(eps).rsqrt();
        return Cast(weight, x) * normed.to(x.dtype);                          // [..., H]
    }

    public static Tensor LayerNorm(Tensor x, Tensor weight, Tensor? bias, double eps) =>
        F.layer_norm(x, [x.shape[^1]], Cast(weight, x), bias is null ? null : Cast(bias, x), eps);

    /// <summary>HF's <c>rotate_half</c>: pairs dimension i with i + D/2.</summary>
    public static Tensor RotateHalf(Tensor x)
    {
        var half = x.shape[^1] / 2;
        var x1 = x.narrow(-1, 0, half);
        var x2 = x.narrow(-1, half, half);
        return cat([x2.neg(), x1], -1);
    }

    /// <summary>Applies rotary tables <c>cos/sin [B,1,T,D]</c> to <c>x [B,heads,T,D]</c>.</summary>
    public static Tensor ApplyRotary(Tensor x, Tensor cos, Tensor sin) => x * cos + RotateHalf(x) * sin;

    /// <summary>
    /// Scaled dot-product attention for <c>q [B,H,T,D]</c> over <c>k, v [B,kvH,S,D]</c>. Grouped-query
    /// attention folds each group's query heads into the row axis (<c>[B,kvH,G·T,D]</c>) so the KV
    /// heads are never copied. <paramref name="bias"/> is an optional additive <c>[B,H,T,S]</c> (ALiBi);
    /// <paramref name="slidingWindow"/> limits each query to its last that-many keys (Mistral/Mixtral).
    /// Returns <c>[B,T,H·D]</c>.
    /// </summary>
    public static Tensor Attention(Tensor q, Tensor k, Tensor v, StepContext ctx, Tensor? bias = null, int? slidingWindow = null)
    {
        long b = q.shape[0], h = q.shape[1], t = q.shape[2], d = q.shape[3];
        long kvH = k.shape[1], s = k.shape[2], g = h / kvH;
        var qg = q.reshape(b, kvH, g * t, d);                                 // [B, kvH, G*T, D]
        Tensor? mask = ctx.MaskFor(slidingWindow);                             // [B, 1, T, S] bool or null
        Tensor? attnMask = null;
        if (bias is not null)
        {
            var add = bias.reshape(b, kvH, g * t, s);                          // [B, kvH, G*T, S]
            attnMask = mask is null ? add : add.masked_fill(mask.repeat(1, 1, g, 1).logical_not(), float.NegativeInfinity);
        }
        else if (mask is not null)
        {
            attnMask = g == 1 ? mask : mask.repeat(1, 1, g, 1);                // [B, 1, G*T, S]
        }
        var o = F.scaled_dot_product_attention(qg, k, v, attnMask, 0.0, false); // [B, kvH, G*T, D]
        return o.reshape(b, h, t, d).transpose(1, 2).reshape(b, t, h * d);     // [B, T, H*D]
    }
}

/// <summary>
/// A block's linear layer <c>x Wᵀ + b</c>, known by its module path inside the block (<c>self_attn.q_proj</c>), so
/// a request's LoRA adapter can add its update there. Every family routes its linears through this one class.
/// </summary>
public sealed class BlockLinear : nn.Module
{
    readonly Parameter weight;   // [out, in], or packed uint8 [out, RowBytes(in)] when quantized
    readonly Parameter? bias;    // [out]

    /// <remarks>
    /// <c>quant</c> is the block format the weight is packed in (<see cref="QuantFormat.None"/>: its stored dtype);
    /// <c>inFeatures</c> the input width, since a packed weight's second dimension is its row bytes.
    /// </remarks>
    public BlockLinear(int block, string module, Parameter weight, Parameter? bias,
        QuantFormat quant = QuantFormat.None, long inFeatures = -1) : base(module)
    {
        Block = block;
        Module = module;
        this.weight = weight;
        this.bias = bias;
        Quant = quant;
        InFeatures = inFeatures >= 0 ? inFeatures : weight.shape[1];
        RegisterComponents();
    }

    /// <summary>The stored weight <c>[out, in]</c> (packed when <see cref="Quant"/> says so) and bias <c>[out]</c>.</summary>
    internal Tensor Weight => weight;
    internal Tensor? Bias => bias;

    /// <summary>How the weight is held: its stored dtype, or a block format.</summary>
    public QuantFormat Quant { get; }

    public long InFeatures { get; }
    public long OutFeatures => weight.shape[0];

    /// <summary>The weight as the kernels read it in place; null when it cannot be (device, dtype, layout).</summary>
    internal Kernels.WeightMatrix? Matrix => Quant == QuantFormat.None
        ? Kernels.WeightMatrix.TryFrom(weight)
        : PackedLinear.Matrix(weight, Quant, InFeatures, _scales.Get(weight, Quant, InFeatures));

    readonly SideScales _scales = new();   // not a parameter: derived from the packed weight, made on first use

    protected override void Dispose(bool disposing)
    {
        if (disposing) _scales.Dispose();
        base.Dispose(disposing);
    }

    /// <summary>Block index and module path, as <see cref="Lora.ILinearAdapter.Delta"/> looks them up.</summary>
    public int Block { get; }
    public string Module { get; }

    /// <summary><c>x [..., in]</c> to <c>[..., out]</c>, plus <paramref name="adapter"/>'s update for this module when it has one.</summary>
    public Tensor Forward(Tensor x, Lora.ILinearAdapter? adapter = null)
    {
        var y = Quant == QuantFormat.None
            ? Ops.Linear(x, weight, bias)                                       // [..., out]
            : PackedLinear.Forward(x, weight, Quant, InFeatures, bias, _scales.Get(weight, Quant, InFeatures));   // [..., out]
        return adapter?.Delta(Block, Module, x) is { } delta ? y + delta : y;  // [..., out]
    }
}

/// <summary>
/// Rotary grouped-query self-attention (Llama, Mixtral, Mistral, Qwen2): project, rotate q and k, append to the cache, attend
/// (within a sliding window when set), project out.
/// </summary>
public sealed class RotaryAttention : nn.Module
{
    readonly BlockLinear q_proj, k_proj, v_proj, o_proj;   // [nh*D, H] [kvH*D, H] [kvH*D, H] [H, nh*D]
    readonly Rotary _rotary;
    readonly int _heads, _kvHeads;
    readonly int? _slidingWindow;

    /// <summary>
    /// <paramref name="qkvBias"/>: biases on q/k/v (Llama's <c>attention_bias</c>, Qwen2); <paramref name="outBias"/>: on
    /// o_proj too (Llama's <c>attention_bias</c> only).
    /// </summary>
    public RotaryAttention(TensorTable t, ModelConfig c, Rotary rotary, bool qkvBias = false, bool outBias = false, int? slidingWindow = null)
        : base("self_attn")
    {
        long h = c.HiddenSize, q = c.NumHeads * c.HeadDim, kv = c.NumKvHeads * c.HeadDim;
        q_proj = t.Linear("self_attn.q_proj", q, h, qkvBias);
        k_proj = t.Linear("self_attn.k_proj", kv, h, qkvBias);
        v_proj = t.Linear("self_attn.v_proj", kv, h, qkvBias);
        o_proj = t.Linear("self_attn.o_proj", h, q, outBias);
        (_rotary, _heads, _kvHeads, _slidingWindow) = (rotary, c.NumHeads, c.NumKvHeads, slidingWindow);
        RegisterComponents();
    }

    internal BlockLinear QProj => q_proj;
    internal BlockLinear KProj => k_proj;
    internal BlockLinear VProj => v_proj;
    internal BlockLinear OProj => o_proj;
    internal Rotary Rotary => _rotary;
    internal int Heads => _heads;
    internal int? SlidingWindow => _slidingWindow;

    /// <summary><c>x [B, T, H]</c> to <c>[B, T, H]</c>.</summary>
    public Tensor Forward(Tensor x, StepContext ctx, LayerCache? cache)
    {
        long b = x.shape[0], t = x.shape[1];
        int d = _rotary.HeadDim;
        var q = q_proj.Forward(x, ctx.Adapter).view(b, t, _heads, d).transpose(1, 2);     // [B, nh, T, D]
        var k = k_proj.Forward(x, ctx.Adapter).view(b, t, _kvHeads, d).transpose(1, 2);   // [B, kvH, T, D]
        var v = v_proj.Forward(x, ctx.Adapter).view(b, t, _kvHeads, d).transpose(1, 2);   // [B, kvH, T, D]
        var (cos, sin) = _rotary.Tables(ctx, x.dtype);                                    // [B, 1, T, D]
        q = Ops.ApplyRotary(q, cos, sin);                                                 // [B, nh, T, D]
        k = Ops.ApplyRotary(k, cos, sin);                                                 // [B, kvH, T, D]
        if (cache is not null) (k, v) = cache.Append(k, v, ctx.PastLength);              // [B, kvH, S, D]
        var o = Ops.Attention(q, k, v, ctx, slidingWindow: _slidingWindow);               // [B, T, nh*D]
        return o_proj.Forward(o, ctx.Adapter);                                            // [B, T, H]
    }
}

/// <summary>SwiGLU MLP <c>down(silu(gate·x) * up·x)</c> (Llama's MLP, each Mixtral expert).</summary>
public static class SwiGlu
{
    /// <summary><c>x [..., H]</c> to <c>[..., H]</c>.</summary>
    public static Tensor Forward(Tensor x, BlockLinear gate, BlockLinear up, BlockLinear down, Lora.ILinearAdapter? adapter) =>
        down.Forward(F.silu(gate.Forward(x, adapter)) * up.Forward(x, adapter), adapter);   // [..., H]
}

/// <summary>HF rope variants: none ("default"), linear, dynamic NTK, and Llama 3.1's frequency-band scaling.</summary>
public sealed record RopeScaling(
    string Type,
    double Factor = 1.0,
    double LowFreqFactor = 1.0,
    double HighFreqFactor = 4.0,
    int? OriginalMaxPositionEmbeddings = null)
{
    public static RopeScaling? Parse(JsonConfigReader r)
    {
        if (r.Object("rope_scaling") is not { } o) return null;
        var sub = new JsonConfigReader(o, r.Source + " rope_scaling");
        var type = sub.String("rope_type") ?? sub.String("type") ?? "default";
        if (type is not ("default" or "linear" or "dynamic" or "llama3"))
            throw new ConfigException($"{r.Source}: unsupported rope_scaling type '{type}' (supported: linear, dynamic, llama3)");
        var scaling = new RopeScaling(type, sub.Double("factor", 1.0), sub.Double("low_freq_factor", 1.0),
            sub.Double("high_freq_factor", 4.0), sub.IntOrNull("original_max_position_embeddings"));
        if (type != "default" && scaling.Factor < 1.0 && type != "linear")
            throw new ConfigException($"{r.Source}: rope_scaling factor must be >= 1 (got {scaling.Factor})");
        if (scaling.Factor <= 0) throw new ConfigException($"{r.Source}: rope_scaling factor must be positive");
        return scaling.Type == "default" ? null : scaling;
    }

    /// <summary>The <c>rope_scaling</c> object as Llama and Mixtral configs write it.</summary>
    public JsonObject ToJson() => new()
    {
        ["rope_type"] = Type, ["factor"] = Factor, ["low_freq_factor"] = LowFreqFactor,
        ["high_freq_factor"] = HighFreqFactor, ["original_max_position_embeddings"] = OriginalMaxPositionEmbeddings,
    };

    /// <summary>Falcon's form: transformers' Falcon config refuses any key but <c>type</c> and <c>factor</c>.</summary>
    public JsonObject ToLegacyJson() => new() { ["type"] = Type, ["factor"] = Factor };
}

/// <summary>Rotary position embedding as in HF transformers 4.45 (<c>modeling_rope_utils</c>).</summary>
public sealed class Rotary(int headDim, double theta, RopeScaling? scaling, int maxPositionEmbeddings)
{
    public int HeadDim { get; } = headDim;
    public RopeScaling? Scaling => scaling;

    /// <summary>Inverse frequencies <c>[D/2]</c> in double, for a sequence of <paramref name="seqLen"/> tokens.</summary>
    public double[] InverseFrequencies(int seqLen = 0)
    {
        double baseTheta = theta;
        if (scaling?.Type == "dynamic" && seqLen > maxPositionEmbeddings)
        {
            // Dynamic NTK raises the base once the sequence outgrows the trained context.
            var f = scaling.Factor;
            baseTheta = theta * Math.Pow(f * seqLen / maxPositionEmbeddings - (f - 1), HeadDim / (HeadDim - 2.0));
        }
        var inv = new double[HeadDim / 2];
        for (int i = 0; i < inv.Length; i++)
        {
            // HF computes arange(0, dim, 2).float() / dim in float32 then base ** that; mirror it.
            float exponent = (float)(2 * i) / HeadDim;
            inv[i] = (float)(1.0 / Math.Pow(baseTheta, exponent));
        }
        if (scaling?.Type == "linear")
            for (int i = 0; i < inv.Length; i++) inv[i] = (float)(inv[i] / scaling.Factor);
        else if (scaling?.Type == "llama3")
            Llama3Scale(inv, scaling, scaling.OriginalMaxPositionEmbeddings ?? maxPositionEmbeddings);
        return inv;
    }

    static void Llama3Scale(double[] inv, RopeScaling s, int oldContext)
    {
        double lowWavelen = oldContext / s.LowFreqFactor, highWavelen = oldContext / s.HighFreqFactor;
        for (int i = 0; i < inv.Length; i++)
        {
            double wavelen = 2 * Math.PI / inv[i];
            double scaled = wavelen > lowWavelen ? inv[i] / s.Factor : inv[i];
            if (!(wavelen < highWavelen) && !(wavelen > lowWavelen))
            {
                double smooth = (oldContext / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                scaled = (1 - smooth) * scaled / s.Factor + smooth * scaled;
            }
            inv[i] = (float)scaled;
        }
    }

    /// <summary>Cos and sin tables <c>[B,1,T,D]</c> for the step's positions, memoised per step.</summary>
    public (Tensor Cos, Tensor Sin) Tables(StepContext ctx, ScalarType dtype)
    {
        var cos = ctx.Memo((this, "cos"), () => Compute(ctx, dtype, cos: true));
        var sin = ctx.Memo((this, "sin"), () => Compute(ctx, dtype, cos: false));
        return (cos, sin);
    }

    Tensor Compute(StepContext ctx, ScalarType dtype, bool cos)
    {
        var invFreq = tensor(InverseFrequencies(ctx.TotalLength - (ctx.LeftPadding?.Min() ?? 0)).Select(x => (float)x).ToArray(), device: ctx.Device); // [D/2]
        var freqs = ctx.PositionIds.to(ScalarType.Float32).unsqueeze(-1) * invFreq;    // [B, T, D/2]
        var emb = cat([freqs, freqs], -1);                                             // [B, T, D]
        return (cos ? emb.cos() : emb.sin()).unsqueeze(1).to(dtype);                   // [B, 1, T, D]
    }
}
