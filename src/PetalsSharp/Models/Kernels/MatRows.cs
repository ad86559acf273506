using System.Runtime.Intrinsics;
using PetalsSharp.Models.Quant;
using TorchSharp;
using static TorchSharp.torch;

namespace PetalsSharp.Models.Kernels;

/// <summary>
/// Element type of a weight matrix as stored; kernels convert to f32 in registers. <see cref="Int8"/> and
/// <see cref="Nf4"/> are the block formats of <see cref="QuantFormat"/>: rows of packed 34-byte blocks.
/// </summary>
public enum WeightType { F32, BF16, F16, Int8, Nf4 }

/// <summary>
/// A weight matrix <c>[Rows = out, Cols = in]</c> in the HF layout, read in place through a raw pointer. The
/// tensor it views must stay alive (and contiguous, on the CPU) while the matrix is used.
/// </summary>
public readonly unsafe struct WeightMatrix(void* data, WeightType type, int rows, int cols, bool exactActivations = false, float* scales = null)
{
    /// <summary>
    /// Optional f32 copy of a packed matrix's block scales, <c>[Rows, Blocks(Cols)]</c>. The one-row integer kernels
    /// read it instead of converting each tile's f16 scales again, which took about 40 % of their time.
    /// </summary>
    public float* Scales { get; } = scales;

    /// <summary>
    /// Keep x in f32 against nf4 weights (the product of the dequantized weights, up to summation order) instead of
    /// the default integer dot of one-row steps, which rounds x to int8 per block as llama.cpp does.
    /// </summary>
    public bool ExactActivations { get; } = exactActivations;

    public void* Data { get; } = data;
    public WeightType Type { get; } = type;
    public int Rows { get; } = rows;
    public int Cols { get; } = cols;

    /// <summary>The block format of a quantized matrix (<see cref="QuantFormat.None"/> for f32, bf16 and f16).</summary>
    public QuantFormat Quant => Type switch
    {
        WeightType.Int8 => QuantFormat.Int8,
        WeightType.Nf4 => QuantFormat.Nf4,
        _ => QuantFormat.None,
    };

    /// <summary>Bytes of one stored row: Cols elements, or the packed blocks of a quantized row.</summary>
    public long RowBytes => Type switch
    {
        WeightType.F32 => 4L * Cols,
        WeightType.BF16 or WeightType.F16 => 2L * Cols,
        _ => Quant.RowBytes(Cols),
    };

    /// <summary>Bytes the whole matrix occupies: what one product must read.</summary>
    public long Bytes => Rows * RowBytes;

    /// <summary>A packed <paramref name="format"/> matrix of <paramref name="rows"/> × <paramref name="cols"/> logical values.</summary>
    public static WeightMatrix Quantized(void* data, QuantFormat format, int rows, int cols, bool exactActivations = false, float* scales = null) => new(data, format switch
    {
        QuantFormat.Int8 => WeightType.Int8,
        QuantFormat.Nf4 => WeightType.Nf4,
        _ => throw new ArgumentException($"{format} is not a block format"),
    }, rows, cols, exactActivations, scales);

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
/// <remarks>
/// A tile of four weight rows is read once and dotted with every activation row while it sits in L1/L2, so a
/// 16-row step costs one pass over the weight, not sixteen. One f32 row reads the weight in address order instead
/// (<see cref="StreamRange"/>), since there is nothing to reuse. One row converts 16-bit weights in registers; with
/// AVX-512, several rows do too (bf16) in 4×4 tiles that prefetch the next tile (<see cref="UseWideTiles"/>); otherwise
/// several rows convert each tile once into a per-thread f32 scratch and reuse it. Without 256-bit SIMD (Arm64) a portable
/// path converts a row at a time and uses <see cref="System.Numerics.Tensors.TensorPrimitives.Dot(ReadOnlySpan{float}, ReadOnlySpan{float})"/>.
/// </remarks>
public static unsafe partial class MatRows
{
    /// <summary>Most activation rows one call takes: a weight row is read once and dotted with every one of them.</summary>
    public const int MaxRows = 16;

    /// <summary>Below this many weights a product runs on the calling thread: waking the team would cost more.</summary>
    public const long SerialWeights = 1 << 16;

    /// <summary>
    /// Output rows [<paramref name="o0"/>, <paramref name="o1"/>) of the product, for every one of <paramref name="rows"/>
    /// activation rows. <paramref name="x"/> is <c>[rows, Cols]</c> (row stride Cols); <paramref name="y"/> has row stride
    /// <paramref name="ldy"/>; <paramref name="bias"/> may be null. Allocates nothing (after a thread's first 16-bit
    /// multi-row call, which sizes its scratch).
    /// </summary>
    public static void MultiplyRange(in WeightMatrix w, float* x, int rows, float* y, int ldy, float* bias, int o0, int o1)
    {
        if (o1 <= o0 || rows <= 0) return;
        if (w.Quant != QuantFormat.None)
        {
            QuantRange(w, x, rows, y, ldy, bias, o0, o1);
            return;
        }
        if (!Vector256.IsHardwareAccelerated)
        {
            Portable(w, x, rows, y, ldy, bias, o0, o1);
            return;
        }
        var data = (byte*)w.Data;
        switch (w.Type)
        {
            case WeightType.F32: Range<F32>(data, w.Cols, x, rows, y, ldy, bias, o0, o1); break;
            case WeightType.BF16: Range<Bf16>(data, w.Cols, x, rows, y, ldy, bias, o0, o1); break;
            default: Range<F16>(data, w.Cols, x, rows, y, ldy, bias, o0, o1); break;
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

    /// <summary>The whole product on <paramref name="team"/> (on the calling thread alone when it is small).</summary>
    public static void Multiply(in WeightMatrix w, float* x, int rows, float* y, int ldy, float* bias, WorkerTeam team)
    {
        if (rows < 1 || rows > MaxRows) throw new ArgumentOutOfRangeException(nameof(rows), $"1 to {MaxRows} rows (got {rows})");
        if ((long)w.Rows * w.Cols < SerialWeights || team.Size == 1)
        {
            MultiplyRange(w, x, rows, y, ldy, bias, 0, w.Rows);
            return;
        }
        // One job object per calling thread: Run is synchronous and not reentrant, so it is never in use twice.
        var job = t_job ??= new Job();
        job.Set(w, x, rows, y, ldy, bias, team.Size);
        try
        {
            team.RunElastic(job);
        }
        finally
        {
            job.Set(default, null, 0, null, 0, null, 1);
        }
    }

    [ThreadStatic] static Job? t_job;

    /// <summary>
    /// Output rows in chunks (about eight per worker) claimed from a shared counter, so a worker that joins late takes
    /// what is left instead of holding up a fixed slice.
    /// </summary>
    sealed class Job : ITeamJob
    {
        WeightMatrix _w;
        float* _x, _y, _bias;
        int _rows, _ldy, _chunkRows, _chunks, _next;

        public void Set(WeightMatrix w, float* x, int rows, float* y, int ldy, float* bias, int workers)
        {
            _chunkRows = Math.Max(8, ((w.Rows + 8 * workers - 1) / (8 * workers) + 7) & ~7);
            _chunks = (w.Rows + _chunkRows - 1) / _chunkRows;
            _next = 0;
            _w = w;
            _x = x;
            _rows = rows;
            _y = y;
            _ldy = ldy;
            _bias = bias;
        }

        public void Execute(int worker, int workers)
        {
            int chunk;
            while ((chunk = Interlocked.Increment(ref _next) - 1) < _chunks)
            {
                int start = chunk * _chunkRows;
                MultiplyRange(_w, _x, _rows, _y, _ldy, _bias, start, Math.Min(_w.Rows, start + _chunkRows));
            }
        }
    }
}
