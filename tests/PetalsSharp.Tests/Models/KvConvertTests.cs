using PetalsSharp.Models.Kernels;
using Xunit;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// The attention kernels' key dots and value sums in every storage format and head size against the same sums
/// written element by element: the vector paths (512- and 256-bit, with bfloat16 widened in registers) and the
/// scalar fallbacks must agree.
/// </summary>
public sealed unsafe class KvConvertTests
{
    [Theory]
    [InlineData(KvKind.Float32, 64)]
    [InlineData(KvKind.Float32, 128)]
    [InlineData(KvKind.Float32, 24)]
    [InlineData(KvKind.Float32, 5)]
    [InlineData(KvKind.BFloat16, 64)]
    [InlineData(KvKind.BFloat16, 128)]
    [InlineData(KvKind.BFloat16, 24)]
    [InlineData(KvKind.Float16, 64)]
    [InlineData(KvKind.Float16, 12)]
    public void Dots_and_weighted_value_sums_match_the_scalar_sums(KvKind kind, int d)
    {
        const int tokens = 7;
        var random = new Random(d);
        int size = kind == KvKind.Float32 ? 4 : 2;
        var stored = new byte[tokens * d * size];
        var q = Enumerable.Range(0, d).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
        var p = Enumerable.Range(0, tokens).Select(j => j == 3 ? 0f : (float)random.NextDouble()).ToArray();   // a masked token
        var acc = Enumerable.Range(0, d).Select(_ => (float)random.NextDouble()).ToArray();
        var expected = (float[])acc.Clone();
        fixed (byte* kv = stored)
        fixed (float* qp = q, pp = p, ap = acc)
        {
            var element = new float[d];
            for (int j = 0; j < tokens; j++)
            {
                fixed (float* e = element)
                {
                    for (int i = 0; i < d; i++) e[i] = (float)random.NextDouble() - 0.5f;
                    KvConvert.Store(e, kv + j * d * size, d, kind);
                    KvConvert.Load(kv + j * d * size, e, d, kind);                     // what the storage holds, as float32
                }
                double dot = 0;
                for (int i = 0; i < d; i++) dot += q[i] * element[i];
                Assert.Equal(dot, KvConvert.Dot(qp, kv + j * d * size, d, kind), 1e-4);
                for (int i = 0; i < d; i++) expected[i] += p[j] * element[i];
            }
            KvConvert.MultiplyAddRun(kv, d * size, pp, tokens, ap, d, kind);
        }
        for (int i = 0; i < d; i++) Assert.Equal(expected[i], acc[i], 1e-4);
    }
}
