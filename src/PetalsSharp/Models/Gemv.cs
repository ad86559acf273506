using System.Runtime.Intrinsics;
using static TorchSharp.torch;

namespace PetalsSharp.Models;

/// <summary>
/// Decode-time matrix-vector product in plain C#. With one token per step every linear layer is a GEMV that
/// must stream its whole weight from memory; libtorch's GEMV reached about 12 GB/s here while two cores can
/// read at 25+ GB/s, and it has no fused bf16 path (upcasting the weight first costs 2.5× the traffic). This
/// kernel splits output rows across cores and converts bf16 on the fly. It runs only where nothing needs
/// autograd; <see cref="Ops.Linear"/> falls back to <c>F.linear</c> otherwise, and a parity test pins both.
/// </summary>
internal static unsafe class Gemv
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

    const long MinWork = 1 << 16;   // below this many weights the thread hand-off costs more than it saves

    /// <summary>Computes <c>x · wᵀ (+ b)</c> when x is a single float32 row on the CPU; false when it does not apply.</summary>
    public static bool TryLinear(Tensor x, Tensor w, Tensor? b, out Tensor y)
    {
        y = null!;
        if (Off.Value || x.dtype != ScalarType.Float32 || x.device_type != TorchSharp.DeviceType.CPU) return false;
        if (w.dim() != 2 || w.device_type != TorchSharp.DeviceType.CPU || !w.is_contiguous()) return false;
        if (w.dtype is not (ScalarType.Float32 or ScalarType.BFloat16)) return false;
        long outF = w.shape[0], inF = w.shape[1];
        if (x.shape[^1] != inF || x.NumberOfElements != inF || outF * inF < MinWork) return false;
        if (x.requires_grad || w.requires_grad || (b is not null && b.requires_grad)) return false;
        if (b is not null && (b.NumberOfElements != outF || b.dim() != 1)) return false;
        // 16-bit biases (BLOOM, Falcon with bias in bf16) are upcast here: [out] is tiny, while declining would send
        // the whole weight matrix through an upcast in F.linear.
        if (b is not null && (b.dtype != ScalarType.Float32 || !b.is_contiguous())) b = b.to(ScalarType.Float32).contiguous();

        var xc = x.is_contiguous() ? x : x.contiguous();
        var shape = x.shape.ToArray();
        shape[^1] = outF;
        y = empty(shape, ScalarType.Float32);
        float* xp = Ptr<float>(xc), yp = Ptr<float>(y), bp = b is null ? null : Ptr<float>(b);
        bool bf16 = w.dtype == ScalarType.BFloat16;
        byte* wp = (byte*)(bf16 ? (void*)Ptr<ushort>(w) : Ptr<float>(w));
        int threads = Math.Max(1, Math.Min(get_num_threads(), (int)(outF * inF / MinWork)));
        long chunk = (outF + threads - 1) / threads;
        int n = (int)inF;
        Parallel.For(0, threads, t =>
        {
            long start = t * chunk, end = Math.Min(outF, start + chunk);
            for (long o = start; o < end; o++)
            {
                float dot = bf16
                    ? DotBf16((ushort*)wp + o * inF, xp, n)
                    : DotF32((float*)wp + o * inF, xp, n);
                yp[o] = bp is null ? dot : dot + bp[o];
            }
        });
        GC.KeepAlive(xc);
        return true;
    }

    static T* Ptr<T>(Tensor t) where T : unmanaged => PetalsSharp.Models.Weights.NativeMemory.Pointer<T>(t);

    /// <summary>Dot of two float32 rows with four independent accumulators, so loads rather than adds set the pace.</summary>
    static float DotF32(float* w, float* x, int n)
    {
        int i = 0;
        float sum = 0;
        if (Vector256.IsHardwareAccelerated && n >= 32)
        {
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; i <= n - 32; i += 32)
            {
                a0 += Vector256.Load(w + i) * Vector256.Load(x + i);
                a1 += Vector256.Load(w + i + 8) * Vector256.Load(x + i + 8);
                a2 += Vector256.Load(w + i + 16) * Vector256.Load(x + i + 16);
                a3 += Vector256.Load(w + i + 24) * Vector256.Load(x + i + 24);
            }
            sum = Vector256.Sum((a0 + a1) + (a2 + a3));
        }
        for (; i < n; i++) sum += w[i] * x[i];
        return sum;
    }

    /// <summary>Dot of a bf16 row with a float32 vector; a bf16 is the top half of a float32.</summary>
    static float DotBf16(ushort* w, float* x, int n)
    {
        int i = 0;
        float sum = 0;
        if (Vector256.IsHardwareAccelerated && n >= 16)
        {
            var acc0 = Vector256<float>.Zero;
            var acc1 = Vector256<float>.Zero;
            for (; i <= n - 16; i += 16)
            {
                var raw = Vector256.Load(w + i);                                   // 16 × bf16
                var (lo, hi) = Vector256.Widen(raw);                               // 2 × 8 × uint32
                acc0 += Vector256.ShiftLeft(lo, 16).AsSingle() * Vector256.Load(x + i);
                acc1 += Vector256.ShiftLeft(hi, 16).AsSingle() * Vector256.Load(x + i + 8);
            }
            sum = Vector256.Sum(acc0 + acc1);
        }
        for (; i < n; i++) sum += BitConverter.Int32BitsToSingle(w[i] << 16) * x[i];
        return sum;
    }
}
