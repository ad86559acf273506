using PetalsSharp.Generation;
using PetalsSharp.Models;
using Xunit;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PetalsSharp.Tests.Models;

/// <summary>The C# decode GEMV is pinned to F.linear, alone and inside a whole model.</summary>
public sealed class GemvTests
{
    [Theory]
    [InlineData(ScalarType.Float32, false)]
    [InlineData(ScalarType.Float32, true)]
    [InlineData(ScalarType.BFloat16, false)]
    [InlineData(ScalarType.BFloat16, true)]
    [InlineData(ScalarType.BFloat16, true, true)]
    public void Matches_F_linear(ScalarType dtype, bool withBias, bool bf16Bias = false)
    {
        using var scope = NewDisposeScope();
        manual_seed(3);
        var w = randn(517, 771).to(dtype);                          // odd sizes exercise the scalar tails
        // A bf16 bias (BLOOM's, stored in bf16) must stay on the fast path: it is upcast, not declined.
        var b = withBias ? (bf16Bias ? randn(517).to(ScalarType.BFloat16) : randn(517)) : null;
        var x = randn(1, 1, 771);
        Assert.True(Gemv.TryLinear(x, w, b, out var fast));
        var reference = F.linear(x, w.to(ScalarType.Float32), b?.to(ScalarType.Float32));
        TensorAssert.Close(reference, fast, 1e-4, 1e-5, "gemv");
    }

    [Fact]
    public void Declines_what_it_cannot_do()
    {
        using var scope = NewDisposeScope();
        var w = randn(512, 512);
        Assert.False(Gemv.TryLinear(randn(2, 1, 512), w, null, out _));                      // more than one row
        Assert.False(Gemv.TryLinear(randn(1, 1, 512).requires_grad_(), w, null, out _));      // autograd needs F.linear
        Assert.False(Gemv.TryLinear(randn(1, 1, 512), w.t(), null, out _));                   // not contiguous
        using (Gemv.Disable()) Assert.False(Gemv.TryLinear(randn(1, 1, 512), w, null, out _));
        Assert.True(Gemv.TryLinear(randn(1, 1, 512), w, null, out _));
    }

    [Fact]
    public async Task Whole_model_decode_is_the_same_with_and_without_it()
    {
        var dir = Path.Combine(Directory.CreateTempSubdirectory("petals-gemv").FullName, "m");
        var config = new LlamaConfig
        {
            ModelType = "llama", VocabSize = 512, HiddenSize = 256, NumLayers = 2, NumHeads = 4, NumKvHeads = 2,
            HeadDim = 64, IntermediateSize = 512, RmsNormEps = 1e-5, EosTokenIds = [511],
        };
        RandomCheckpoint.Write(config, dir, seed: 5);
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
        {
            using var lm = CausalLM.Load(dir, new ModelLoadOptions(dtype));
            var opts = new GenerationOptions { MaxNewTokens = 16, IgnoreEos = true, HiddenStateLayers = [2] };
            var fast = await lm.GenerateAsync([[1, 2, 3, 4]], opts);
            GenerationResult slow;
            using (Gemv.Disable()) slow = await lm.GenerateAsync([[1, 2, 3, 4]], opts);
            Assert.Equal(slow.NewTokens, fast.NewTokens);
            TensorAssert.Close(slow.HiddenStates[2], fast.HiddenStates[2], 1e-4, 1e-4, $"last hidden state ({dtype})");
        }
    }
}
