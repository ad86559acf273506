using System.Numerics.Tensors;
using PetalsSharp.Models.Quant;

namespace PetalsSharp.Models.Kernels;

// Products against block-quantized weights (Quant.QuantFormat). This first version is the portable definition:
// each weight row is dequantized into scratch and dotted with every activation row.
public static unsafe partial class MatRows
{
    static void QuantRange(in WeightMatrix w, float* x, int rows, float* y, int ldy, float* bias, int o0, int o1)
    {
        int n = w.Cols;
        long rowBytes = w.RowBytes;
        float* row = Scratch(n);
        var format = w.Quant;
        var values = new Span<float>(row, n);
        for (int o = o0; o < o1; o++)
        {
            BlockQuant.Dequantize(format, new ReadOnlySpan<byte>((byte*)w.Data + o * rowBytes, (int)rowBytes), 1, n, values);
            for (int r = 0; r < rows; r++)
            {
                float dot = TensorPrimitives.Dot(values, new ReadOnlySpan<float>(x + (long)r * n, n));
                y[(long)r * ldy + o] = bias is null ? dot : dot + bias[o];
            }
        }
    }
}
