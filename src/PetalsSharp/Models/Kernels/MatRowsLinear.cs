using static TorchSharp.torch;

namespace PetalsSharp.Models.Kernels;

/// <summary>
/// <see cref="Ops.Linear"/>'s fast path: a step of 1 to <see cref="MatRows.MaxRows"/> activation rows (leading dimensions
/// flattened) runs on <see cref="MatRows"/>, which reads the weight once, in place and in its stored dtype. libtorch's
/// GEMV reads f32 at about the bandwidth but has no 16-bit path (upcasting first costs 2.5× the traffic and a whole f32
/// copy of the matrix). It applies only where nothing needs autograd; <c>F.linear</c> stays the reference, and
/// <see cref="Disable"/> lets parity tests and benchmarks compare both.
/// </summary>
internal static unsafe class MatRowsLinear
{
    static readonly AsyncLocal<bool> Off = new();

    /// <summary>Turns the kernel off for the current async flow (parity tests and benchmarks compare both paths).</summary>
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

    /// <summary>Computes <c>x · wᵀ (+ b)</c> for f32 <c>x [..., in]</c> of at most 16 rows on the CPU; false when it does not apply.</summary>
    public static bool TryLinear(Tensor x, Tensor w, Tensor? b, out Tensor y)
    {
        y = null!;
        return !w.requires_grad && WeightMatrix.TryFrom(w) is { } matrix && TryLinear(x, matrix, w, b, out y);
    }

    /// <summary>
    /// The same for a matrix already viewed in place (a packed weight, <see cref="Quant.PackedLinear"/>);
    /// <paramref name="owner"/> is the tensor holding its memory, kept alive for the call.
    /// </summary>
    public static bool TryLinear(Tensor x, in WeightMatrix matrix, Tensor owner, Tensor? b, out Tensor y)
    {
        y = null!;
        if (Off.Value || x.dtype != ScalarType.Float32 || x.device_type != TorchSharp.DeviceType.CPU || x.dim() < 1) return false;
        if (x.requires_grad || (b is not null && b.requires_grad)) return false;
        long inF = matrix.Cols, outF = matrix.Rows;
        if (x.shape[^1] != inF || inF == 0) return false;
        long rows = x.NumberOfElements / inF;
        if (rows < 1 || rows > MatRows.MaxRows) return false;
        if (b is not null && (b.dim() != 1 || b.shape[0] != outF || b.device_type != TorchSharp.DeviceType.CPU)) return false;
        // 16-bit biases (BLOOM, Falcon with bias in bf16) are upcast here: [out] is tiny, while declining would send
        // the whole weight matrix through an upcast in F.linear.
        if (b is not null && (b.dtype != ScalarType.Float32 || !b.is_contiguous())) b = b.to(ScalarType.Float32).contiguous();

        var xc = x.is_contiguous() ? x : x.contiguous();                      // [..., in]
        var shape = x.shape.ToArray();
        shape[^1] = outF;
        y = empty(shape, ScalarType.Float32);                                  // [..., out]
        float* xp = Ptr(xc), yp = Ptr(y), bp = b is null ? null : Ptr(b);
        MatRows.Multiply(matrix, xp, (int)rows, yp, (int)outF, bp, WorkerTeam.Shared);
        GC.KeepAlive(xc);
        GC.KeepAlive(b);
        GC.KeepAlive(owner);
        return true;
    }

    static float* Ptr(Tensor t) => Weights.NativeMemory.Pointer<float>(t);
}
