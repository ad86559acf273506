using static TorchSharp.torch;

namespace PetalsSharp.Models;

/// <summary>
/// What every block of one step shares: where the new tokens sit (past length, per-row left padding) and
/// the derived position ids and attention mask, built once per step rather than once per block.
/// </summary>
public sealed class StepContext
{
    readonly Dictionary<object, Tensor> _memo = new();

    /// <param name="batch">Rows B.</param>
    /// <param name="newTokens">New tokens T in this step.</param>
    /// <param name="pastLength">Tokens already in the cache (0 for a cache-free forward).</param>
    /// <param name="leftPadding">Per-row count of left-padding tokens at the start of the sequence, or null.</param>
    /// <param name="device">Where the derived tensors live.</param>
    public StepContext(int batch, int newTokens, int pastLength = 0, IReadOnlyList<int>? leftPadding = null, Device? device = null)
    {
        if (leftPadding is not null && leftPadding.Count != batch)
            throw new ArgumentException($"left padding has {leftPadding.Count} rows, batch has {batch}");
        Batch = batch;
        NewTokens = newTokens;
        PastLength = pastLength;
        LeftPadding = leftPadding is not null && leftPadding.Any(p => p > 0) ? leftPadding.ToArray() : null;
        Device = device ?? CPU;
    }

    public int Batch { get; }
    public int NewTokens { get; }
    public int PastLength { get; }
    public int TotalLength => PastLength + NewTokens;
    public int[]? LeftPadding { get; }
    public Device Device { get; }

    /// <summary>The request's adapter (a server-side LoRA), applied by blocks that route linears through it; null = base weights.</summary>
    public Lora.ILinearAdapter? Adapter { get; init; }

    /// <summary>Position of each new token, counting from each row's first real token. <c>[B, T]</c> int64.</summary>
    public Tensor PositionIds => Memo("pos", () =>
    {
        var pos = arange(PastLength, TotalLength, dtype: ScalarType.Int64, device: Device)    // [T]
            .unsqueeze(0).expand(Batch, NewTokens);                                          // [B, T]
        if (LeftPadding is null) return pos.contiguous();
        var pad = tensor(LeftPadding.Select(p => (long)p).ToArray(), device: Device).unsqueeze(1); // [B, 1]
        return (pos - pad).clamp_min(0);                                                      // [B, T]
    });

    /// <summary>
    /// Boolean mask <c>[B, 1, T, S]</c> (true = may attend): causal, minus left padding. Every query may
    /// always see itself, so a padding row never softmaxes over nothing. Null when every key is visible.
    /// </summary>
    public Tensor? Mask => NewTokens == 1 && LeftPadding is null ? null : Memo("mask", () =>
    {
        var q = arange(PastLength, TotalLength, dtype: ScalarType.Int64, device: Device).unsqueeze(1); // [T, 1]
        var k = arange(0, TotalLength, dtype: ScalarType.Int64, device: Device).unsqueeze(0);          // [1, S]
        var causal = k.le(q).unsqueeze(0);                                                              // [1, T, S]
        if (LeftPadding is null) return causal.expand(Batch, NewTokens, TotalLength).unsqueeze(1);
        var pad = tensor(LeftPadding.Select(p => (long)p).ToArray(), device: Device).view(-1, 1, 1);    // [B, 1, 1]
        var visible = causal.logical_and(k.unsqueeze(0).ge(pad)).logical_or(k.eq(q).unsqueeze(0));     // [B, T, S]
        return visible.unsqueeze(1);                                                                    // [B, 1, T, S]
    });

    /// <summary>
    /// <see cref="Mask"/> further limited to each query's last <paramref name="slidingWindow"/> keys, itself
    /// included (HF Mistral/Mixtral: key j is hidden from query i when j ≤ i − window, on absolute cache
    /// indices). Null window, or a sequence that fits in it, gives <see cref="Mask"/> unchanged.
    /// </summary>
    public Tensor? MaskFor(int? slidingWindow)
    {
        if (slidingWindow is not { } window || TotalLength <= window) return Mask;
        return Memo(("mask", window), () =>
        {
            var q = arange(PastLength, TotalLength, dtype: ScalarType.Int64, device: Device).unsqueeze(1); // [T, 1]
            var k = arange(0, TotalLength, dtype: ScalarType.Int64, device: Device).unsqueeze(0);          // [1, S]
            var recent = k.gt(q - window).view(1, 1, NewTokens, TotalLength);                               // [1, 1, T, S]
            var visible = Mask ?? ones([Batch, 1, NewTokens, TotalLength], ScalarType.Bool, Device);       // [B, 1, T, S]
            return visible.logical_and(recent);                                                             // [B, 1, T, S]
        });
    }

    /// <summary>Per-step memo for tensors that several blocks derive the same way (rotary tables, ALiBi).</summary>
    public Tensor Memo(object key, Func<Tensor> make)
    {
        if (!_memo.TryGetValue(key, out var t)) _memo[key] = t = make();
        return t;
    }
}
