using System.Runtime.Intrinsics;
using TorchSharp;
using static TorchSharp.torch;

namespace PetalsSharp.Models.Kernels;

/// <summary>Element type of a weight matrix as stored; kernels convert to f32 in registers.</summary>
public enum WeightType { F32, BF16, F16 }

/// <summary>
/// A weight matrix <c>[Rows = out, Cols = in]</c> in the HF layout, read in place through a raw pointer. The
/// tensor it views must stay alive (and contiguous, on the CPU) while the matrix is used.
/// </summary>
public readonly unsafe struct WeightMatrix(void* data, WeightType type, int rows, int cols)
{
    public void* Data { get; } = data;
    public WeightType Type { get; } = type;
    public int Rows { get; } = rows;
    public int Cols { get; } = cols;

    /// <summary>Views <paramref name="w"/> <c>[out, in]</c>; null when its dtype, device or layout cannot be read in place.</summary>
    public static WeightMatrix? TryFrom(Tensor w)
    {
        if (w.dim() != 2 || w.device_type != DeviceType.CPU || !w.is_contiguous()) return null;
        WeightType? type = w.dtype switch
        {
            ScalarType.Float32 => WeightType.F32,
            ScalarType.BFloat16 => WeightType.BF16,
            ScalarType.Float16 => WeightType.F16,
            _ => null,
        };
        if (type is null) return null;
        return new WeightMatrix(Weights.NativeMemory.Pointer<byte>(w), type.Value, (int)w.shape[0], (int)w.shape[1]);
    }
}

/// <summary>
/// <c>y[r, o] = Σᵢ x[r, i] · W[o, i] (+ bias[o])</c> for a few activation rows (a decode step: 1 to 16 rows) against a
/// weight read once from memory, in its stored dtype, accumulating in f32. Output rows are split across a
/// <see cref="WorkerTeam"/>; inside a fused job each worker calls <see cref="MultiplyRange"/> on its own slice.
/// </summary>
public static unsafe class MatRows
{
    /// <summary>Most activation rows one call takes: a weight row is read once and dotted with every one of them.</summary>
    public const int MaxRows = 16;

    /// <summary>
    /// Output rows [<paramref name="o0"/>, <paramref name="o1"/>) of the product, for every one of <paramref name="rows"/>
    /// activation rows. <paramref name="x"/> is <c>[rows, Cols]</c> (row stride Cols); <paramref name="y"/> has row stride
    /// <paramref name="ldy"/>; <paramref name="bias"/> may be null.
    /// </summary>
    public static void MultiplyRange(in WeightMatrix w, float* x, int rows, float* y, int ldy, float* bias, int o0, int o1)
    {
        int n = w.Cols;
        for (int o = o0; o < o1; o++)
        {
            for (int r = 0; r < rows; r++)
            {
                float dot = w.Type switch
                {
                    WeightType.F32 => DotF32((float*)w.Data + (long)o * n, x + (long)r * n, n),
                    WeightType.BF16 => DotBf16((ushort*)w.Data + (long)o * n, x + (long)r * n, n),
                    _ => DotF16((Half*)w.Data + (long)o * n, x + (long)r * n, n),
                };
                y[(long)r * ldy + o] = bias is null ? dot : dot + bias[o];
            }
        }
    }

    /// <summary>The slice of [0, <paramref name="count"/>) that <paramref name="worker"/> of <paramref name="workers"/> owns.</summary>
    public static (int Start, int End) Slice(int count, int worker, int workers, int align = 8)
    {
        int per = (count + workers - 1) / workers;
        per = (per + align - 1) / align * align;
        int start = Math.Min(count, worker * per);
        return (start, Math.Min(count, start + per));
    }

    /// <summary>The whole product on <paramref name="team"/>.</summary>
    public static void Multiply(in WeightMatrix w, float* x, int rows, float* y, int ldy, float* bias, WorkerTeam team)
    {
        if (rows < 1 || rows > MaxRows) throw new ArgumentOutOfRangeException(nameof(rows), $"1 to {MaxRows} rows (got {rows})");
        team.Run(new Job(w, x, rows, y, ldy, bias));
    }

    sealed class Job(WeightMatrix w, float* x, int rows, float* y, int ldy, float* bias) : ITeamJob
    {
        public void Execute(int worker, int workers)
        {
            var (start, end) = Slice(w.Rows, worker, workers);
            MultiplyRange(w, x, rows, y, ldy, bias, start, end);
        }
    }

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

    static float DotBf16(ushort* w, float* x, int n)
    {
        int i = 0;
        float sum = 0;
        if (Vector256.IsHardwareAccelerated && n >= 16)
        {
            Vector256<float> a0 = default, a1 = default;
            for (; i <= n - 16; i += 16)
            {
                var (lo, hi) = Vector256.Widen(Vector256.Load(w + i));         // 2 × 8 × uint32
                a0 += Vector256.ShiftLeft(lo, 16).AsSingle() * Vector256.Load(x + i);
                a1 += Vector256.ShiftLeft(hi, 16).AsSingle() * Vector256.Load(x + i + 8);
            }
            sum = Vector256.Sum(a0 + a1);
        }
        for (; i < n; i++) sum += BitConverter.Int32BitsToSingle(w[i] << 16) * x[i];
        return sum;
    }

    static float DotF16(Half* w, float* x, int n)
    {
        float sum = 0;
        for (int i = 0; i < n; i++) sum += (float)w[i] * x[i];
        return sum;
    }
}
