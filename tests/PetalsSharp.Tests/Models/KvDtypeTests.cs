using PetalsSharp.Models;
using PetalsSharp.Models.Kernels;
using PetalsSharp.Server;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// 16-bit KV pages (<c>--kv-dtype</c>): the kernels store exactly what libtorch's <c>to(dtype)</c> stores, so the fused
/// and reference paths read the same cache; decoding through them stays close to a float32 cache; the server's default
/// follows the weights.
/// </summary>
public sealed unsafe class KvDtypeTests
{
    [Theory]
    [InlineData(ScalarType.BFloat16, KvKind.BFloat16)]
    [InlineData(ScalarType.Float16, KvKind.Float16)]
    public void Stores_round_as_libtorch_and_loads_widen_exactly(ScalarType dtype, KvKind kind)
    {
        using var scope = NewDisposeScope();
        manual_seed(1);
        // Random values, values on rounding ties, tiny and huge ones.
        var x = cat([randn(997) * 3, tensor(new[] { 1.00390625f, 1.01171875f, -2.0078125f, 1e-30f, 3e38f, 0f, -0f })]).contiguous();
        int d = (int)x.shape[0];
        var stored = new byte[d * 2];
        var back = new float[d];
        fixed (byte* s = stored)
        fixed (float* b = back)
        {
            KvConvert.Store(PetalsSharp.Models.Weights.NativeMemory.Pointer<float>(x), s, d, kind);
            KvConvert.Load(s, b, d, kind);
        }
        var expected = x.to(dtype).to(ScalarType.Float32);
        Assert.Equal(expected.data<float>().ToArray(), back);
        Assert.Equal(x.to(dtype).bytes.ToArray(), stored);
    }

    /// <remarks>
    /// The prefix runs on the reference on every session: a short prompt on the fused path goes in chunks, and later
    /// chunks read the earlier ones' keys back from the 16-bit cache, where one whole step attends to them unrounded.
    /// </remarks>
    static void Decode(LocalBlockSession session, Tensor prefix, Tensor[] steps, List<Tensor> outputs)
    {
        using (FusedDecode.Disable()) outputs.Add(session.Step(prefix));
        foreach (var s in steps) outputs.Add(session.Step(s));
    }

    [Theory]
    [InlineData("llama-gqa", ScalarType.BFloat16)]
    [InlineData("llama-gqa", ScalarType.Float16)]
    [InlineData("mixtral", ScalarType.BFloat16)]
    [InlineData("falcon-new", ScalarType.BFloat16)]
    [InlineData("bloom", ScalarType.Float16)]
    public void A_16_bit_cache_reads_the_same_on_both_paths_and_stays_close_to_float32(string fixture, ScalarType dtype)
    {
        using var ckpt = Checkpoint.Open(TestData.Path(fixture));
        using var half = ckpt.LoadBlocks(0, ckpt.Config.NumLayers, ScalarType.Float32);
        half.CacheDType = dtype;
        using var full = ckpt.LoadBlocks(0, ckpt.Config.NumLayers, ScalarType.Float32);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        manual_seed(2);
        int h = half.Config.HiddenSize;
        var prefix = randn(2, 19, h);                                           // [B, 19, H]: two pages a row
        var steps = new[] { randn(2, 1, h), randn(2, 2, h), randn(2, 1, h) };   // [B, T, H]
        var options = new SessionOptions(2, 32, [0, 2]);
        using var fused = (LocalBlockSession)half.OpenSession(options);
        using var reference = (LocalBlockSession)half.OpenSession(options);
        using var exact = (LocalBlockSession)full.OpenSession(options);
        List<Tensor> a = [], b = [], c = [];
        Decode(fused, prefix, steps, a);
        using (FusedDecode.Disable()) Decode(reference, prefix, steps, b);
        Decode(exact, prefix, steps, c);
        Assert.True(fused.FusedSteps > 0, "the decode steps ran fused");
        Assert.Equal(dtype, fused.Caches[0].DType);
        Assert.Equal(fused.Caches[0].Bytes, exact.Caches[0].Bytes / 2);
        for (int i = 0; i < a.Count; i++)
        {
            // The paths' keys differ by float32 rounding before they are stored; a 16-bit store can turn that into
            // one unit of its last place now and then, so the bound is looser than the float32 cache's 1e-5.
            TensorAssert.Close(b[i], a[i], 1e-3, 1e-3, $"step {i}: fused against reference over a {dtype} cache");
            double scale = c[i].abs().max().item<float>();
            Assert.True(TensorAssert.MaxAbsDiff(c[i], a[i]) < 0.05 * scale, $"step {i}: a {dtype} cache drifted from float32");
        }
    }

    [Theory]
    [InlineData(ScalarType.Float32, null, ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16, null, ScalarType.BFloat16)]
    [InlineData(ScalarType.Float16, null, ScalarType.Float16)]
    [InlineData(ScalarType.BFloat16, ScalarType.Float32, ScalarType.Float32)]
    [InlineData(ScalarType.Float32, ScalarType.BFloat16, ScalarType.BFloat16)]
    public void The_server_default_follows_the_weights(ScalarType weights, ScalarType? asked, ScalarType expected)
    {
        var options = new ServerOptions { ModelDir = TestData.Path("llama-gqa"), StartBlock = 0, EndBlock = 2, WeightDtype = weights, KvDtype = asked };
        using var ckpt = Checkpoint.Open(options.ModelDir);
        var span = ServedSpan.Load(ckpt, options, 0, 2);
        using var stack = span.Stack;
        Assert.Equal(expected, stack.CacheDType);
        Assert.Equal(expected, stack.Pages.DType);
    }
}
