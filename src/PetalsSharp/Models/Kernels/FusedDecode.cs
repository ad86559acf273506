using PetalsSharp.Models.Lora;
using TorchSharp;
using static TorchSharp.torch;

namespace PetalsSharp.Models.Kernels;

/// <summary>
/// When a cached step runs on the fused path, and the switch that forces the TorchSharp reference (parity tests and
/// benchmarks compare both). The reference stays for autograd, deep prompts, more rows than the kernels take, other
/// devices and dtypes, adapters the kernels do not know, and families without a plan.
/// </summary>
public static class FusedDecode
{
    static readonly AsyncLocal<bool> Off = new();

    /// <summary>Forces the reference path for the current async flow until disposed.</summary>
    public static IDisposable Disable()
    {
        var before = Off.Value;
        Off.Value = true;
        return new Restore(before);
    }

    sealed class Restore(bool before) : IDisposable
    {
        public void Dispose() => Off.Value = before;
    }

    public static bool IsDisabled => Off.Value;

    /// <summary>Adapters the fused path applies itself: none, or a <see cref="LoraAdapter"/> (float32 factors, no autograd).</summary>
    public static bool Supports(ILinearAdapter? adapter) => adapter is null or LoraAdapter;

    /// <summary>Whether a step of <paramref name="hidden"/> <c>[B, T, H]</c> over these caches may run fused (plans aside).</summary>
    public static bool Applies(Tensor hidden, StepContext ctx, IReadOnlyList<LayerCache> caches, bool hasPrompts) =>
        Applies(hidden, (long)ctx.Batch * ctx.NewTokens, ctx.Adapter, caches, hasPrompts);

    /// <summary>The same for <paramref name="rows"/> rows (batch × new tokens) under <paramref name="adapter"/>.</summary>
    public static bool Applies(Tensor hidden, long rows, ILinearAdapter? adapter, IReadOnlyList<LayerCache> caches, bool hasPrompts)
    {
        if (Off.Value || hasPrompts || !Supports(adapter)) return false;
        if (hidden.device_type != DeviceType.CPU || hidden.dtype != ScalarType.Float32) return false;
        if (hidden.requires_grad && is_grad_enabled()) return false;
        if (rows < 1 || rows > MatRows.MaxRows) return false;
        return true;   // every cache dtype: the kernels convert 16-bit pages themselves
    }

    /// <summary>Every block's plan, or null when one block has none (the whole step then runs the reference).</summary>
    public static IFusedBlock[]? Plans(IReadOnlyList<DecoderBlock> blocks)
    {
        var plans = new IFusedBlock[blocks.Count];
        for (int i = 0; i < plans.Length; i++)
            if ((plans[i] = blocks[i].TryFuse()!) is null) return null;
        return plans;
    }
}
