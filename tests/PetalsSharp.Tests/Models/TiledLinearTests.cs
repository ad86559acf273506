using PetalsSharp.Models;
using Xunit;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PetalsSharp.Tests.Models;

/// <summary>Multi-row steps over 16-bit weights upcast one tile at a time and match upcasting the whole matrix.</summary>
public sealed class TiledLinearTests
{
    [Theory]
    [InlineData(ScalarType.BFloat16, false, 1L << 12)]    // a few rows per tile, and a ragged last tile
    [InlineData(ScalarType.BFloat16, true, 1L << 12)]
    [InlineData(ScalarType.Float16, true, 1L << 12)]
    [InlineData(ScalarType.BFloat16, true, 1L << 30)]     // one tile: the plain path
    public void Matches_upcasting_the_whole_weight(ScalarType dtype, bool withBias, long tileBytes)
    {
        using var scope = NewDisposeScope();
        manual_seed(5);
        var w = randn(203, 96).to(dtype);                                         // [out, in]
        var b = withBias ? randn(203).to(dtype) : null;                           // [out]
        var x = randn(2, 37, 96);                                                 // [B, T, in]
        var tiled = TiledLinear.Forward(x, w, b, tileBytes);                      // [B, T, out]
        var whole = F.linear(x, w.to(ScalarType.Float32), b?.to(ScalarType.Float32));
        Assert.Equal(whole.shape, tiled.shape);
        Assert.True(tiled.is_contiguous());
        TensorAssert.Close(whole, tiled, 1e-5, 1e-5, "tiled linear");
    }

    [Fact]
    public void Ops_Linear_tiles_16_bit_weights_and_keeps_autograd()
    {
        using var scope = NewDisposeScope();
        // Grad mode is per thread, and xunit reuses its threads: a no_grad some test left open on this one must not
        // turn the gradient below off (it did once, and autograd.grad then ended the process).
        using var gradMode = enable_grad();
        manual_seed(6);
        var w = randn(16000, 300).to(ScalarType.BFloat16);                        // [out, in]: two default tiles
        var x = randn(1, 20, 300);                                                // [B, T, in]: more rows than decode kernels take
        var whole = F.linear(x, w.to(ScalarType.Float32));                        // [B, T, out]
        TensorAssert.Close(whole, Ops.Linear(x, w), 1e-5, 1e-5, "Ops.Linear");

        // Training steps (server Backward, finetuning) take the gradient with respect to the input.
        var xg = x.clone().requires_grad_();
        var y = Ops.Linear(xg, w);                                                // [B, T, out]
        var grad = autograd.grad([y], [xg], [ones_like(y)])[0];                   // [B, T, in]
        var xr = x.clone().requires_grad_();
        var yr = F.linear(xr, w.to(ScalarType.Float32));                          // [B, T, out]
        var expected = autograd.grad([yr], [xr], [ones_like(yr)])[0];             // [B, T, in]
        TensorAssert.Close(expected, grad, 1e-4, 1e-4, "grad");
    }
}
