using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace PetalsSharp.Models.Kernels;

/// <summary>A small float32 copy (norm weights, biases) on the pinned heap, so kernels hold a stable pointer.</summary>
public sealed unsafe class PinnedVector
{
    readonly float[] _data;

    public PinnedVector(Tensor t)
    {
        using var f = t.detach().to(ScalarType.Float32).contiguous().cpu();   // [n]
        _data = GC.AllocateArray<float>((int)f.NumberOfElements, pinned: true);
        f.data<float>().CopyTo(_data);
        Pointer = (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_data));
    }

    public float* Pointer { get; }
    public int Length => _data.Length;

    public static PinnedVector? Of(Tensor? t) => t is null ? null : new PinnedVector(t);
}

/// <summary>An RMSNorm over the hidden rows; the rows are split across workers.</summary>
public sealed unsafe class FusedNorm(Norm norm)
{
    readonly PinnedVector _weight = new(norm.Weight);
    readonly double _eps = norm.Eps;

    /// <summary>Whether the fused path has this norm's kind (RMSNorm today; LayerNorm comes with Falcon and BLOOM).</summary>
    public static bool Supports(Norm norm) => norm.IsRms;

    /// <summary>Hidden size H.</summary>
    public int Width => _weight.Length;

    /// <summary><c>y [R, H] = norm(x [R, H])</c>, this worker's rows.</summary>
    public void Phase(FusedStep step, float* x, float* y, int worker, int workers)
    {
        int h = _weight.Length;
        var (r0, r1) = MatRows.Slice(step.Rows, worker, workers, align: 1);
        for (int r = r0; r < r1; r++) RowKernels.RmsNorm(x + (long)r * h, _weight.Pointer, _eps, y + (long)r * h, h);
    }
}

/// <summary>
/// A block linear on the fused path: its weight read in place through <see cref="WeightMatrix"/>, its bias pinned,
/// and the adapter's update (module <see cref="ModuleIndex"/> of the plan) added on the same output slice.
/// </summary>
public sealed unsafe class FusedLinear
{
    readonly WeightMatrix _w;
    readonly PinnedVector? _bias;

    FusedLinear(WeightMatrix w, PinnedVector? bias, int moduleIndex) => (_w, _bias, ModuleIndex) = (w, bias, moduleIndex);

    public int ModuleIndex { get; }
    public int Out => _w.Rows;
    public int In => _w.Cols;

    /// <summary>Null when the weight cannot be read in place (dtype, device or layout).</summary>
    public static FusedLinear? From(BlockLinear linear, int moduleIndex) =>
        linear.Matrix is { } w ? new FusedLinear(w, PinnedVector.Of(linear.Bias), moduleIndex) : null;

    /// <summary><c>y [R, Out] = x [R, In] Wᵀ + b (+ adapter)</c>, its output columns claimed in chunks by whichever worker is free.</summary>
    public void Phase(FusedStep step, float* x, float* y, int worker)
    {
        var chunks = step.Claim(worker, Out);
        while (chunks.Next(out int o0, out int o1)) Range(step, x, step.Rows, y, o0, o1, worker);
    }

    /// <summary>
    /// This worker's static half of the output columns; returns them so the caller may finish its slice before the
    /// next barrier. For phases that pair two products column by column (Falcon's parallel attention and MLP).
    /// </summary>
    public (int Start, int End) StaticPhase(FusedStep step, float* x, float* y, int worker, int workers)
    {
        var (o0, o1) = MatRows.Slice(Out, worker, workers);
        if (o1 <= o0) return (o0, o1);
        MatRows.MultiplyRange(_w, x, step.Rows, y, Out, _bias is null ? null : _bias.Pointer, o0, o1);
        step.AddLowRank(ModuleIndex, x, In, step.Rows, y, Out, o0, o1, worker);
        return (o0, o1);
    }

    /// <summary>
    /// Output columns [<paramref name="o0"/>, <paramref name="o1"/>) of the product for <paramref name="rows"/> rows of
    /// <paramref name="x"/> (at most <see cref="MatRows.MaxRows"/>) that need not be the step's: a gathered subset, as
    /// a Mixtral expert sees only the rows routed to it. The caller picks the slice.
    /// </summary>
    public void Range(FusedStep step, float* x, int rows, float* y, int o0, int o1, int worker)
    {
        if (o1 <= o0 || rows <= 0) return;
        MatRows.MultiplyRange(_w, x, rows, y, Out, _bias is null ? null : _bias.Pointer, o0, o1);
        step.AddLowRank(ModuleIndex, x, In, rows, y, Out, o0, o1, worker);
    }
}

/// <summary>Residual adds on a worker's output slice.</summary>
public static unsafe class Residual
{
    /// <summary><c>acc[r, o] += add[r, o]</c> for every row and o in [o0, o1) (both with row stride <paramref name="ld"/>).</summary>
    public static void Add(float* acc, float* add, int rows, int ld, int o0, int o1)
    {
        for (int r = 0; r < rows; r++) RowKernels.AddInto(acc + (long)r * ld, add + (long)r * ld, o0, o1);
    }
}
