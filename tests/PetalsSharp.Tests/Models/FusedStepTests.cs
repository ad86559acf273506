using PetalsSharp.Models;
using PetalsSharp.Models.Kernels;
using PetalsSharp.Models.Weights;
using PetalsSharp.Tests.Adapters;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// The step-level pieces of the fused path: a whole step in one team run matches block-by-block runs exactly and
/// allocates nothing on the caller, and the 1-row 16-bit kernels (shift/mask pairs, 256- and 512-bit) are exact.
/// </summary>
public sealed unsafe class FusedStepTests
{
    [Fact]
    public void One_run_per_step_matches_one_run_per_block_and_allocates_nothing()
    {
        using var ckpt = Checkpoint.Open(TestAdapter.ModelDir);
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        manual_seed(5);
        var plans = FusedDecode.Plans(stack.Blocks);
        Assert.NotNull(plans);
        int h = stack.Config.HiddenSize;
        using var perBlock = (LocalBlockSession)stack.OpenSession(new SessionOptions(2, 16));
        using var perStep = (LocalBlockSession)stack.OpenSession(new SessionOptions(2, 16));
        var prefix = randn(2, 3, h);                                           // [B, T, H]
        perBlock.Step(prefix);
        perStep.Step(prefix);

        var x = randn(2, 1, h);                                                // [B, 1, H]
        var a = x.clone();                                                     // [B, 1, H]
        var b = x.clone();                                                     // [B, 1, H]
        var ctx = new StepContext(2, 1, 3, null, x.device);
        using var stepA = new FusedStep(WorkerTeam.Shared, null);
        using var stepB = new FusedStep(WorkerTeam.Shared, null);
        stepA.Begin(ctx, NativeMemory.Pointer<float>(a));
        for (int i = 0; i < plans!.Length; i++) stepA.RunBlock(plans[i], stack.Blocks[i], perBlock.Caches[i]);
        stepB.Begin(ctx, NativeMemory.Pointer<float>(b));
        stepB.RunBlocks(plans, stack.Blocks, perStep.Caches);
        Assert.True(TensorAssert.MaxAbsDiff(a, b) == 0, "one run per step differs from one run per block");
        int last = plans.Length - 1, d = perStep.Caches[last].HeadDim;
        Assert.Equal(new ReadOnlySpan<float>(perBlock.Caches[last].Pages().Key(1, 3, 0), d).ToArray(),
                     new ReadOnlySpan<float>(perStep.Caches[last].Pages().Key(1, 3, 0), d).ToArray());

        // The same step again (it rewrites the same cache slot): warm now, so the caller allocates nothing.
        for (int warm = 0; warm < 3; warm++)
        {
            b.copy_(x);
            stepB.Begin(ctx, NativeMemory.Pointer<float>(b));
            stepB.RunBlocks(plans, stack.Blocks, perStep.Caches);
        }
        b.copy_(x);
        long before = GC.GetAllocatedBytesForCurrentThread();
        stepB.Begin(ctx, NativeMemory.Pointer<float>(b));
        stepB.RunBlocks(plans, stack.Blocks, perStep.Caches);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(0L, allocated);
        Assert.True(TensorAssert.MaxAbsDiff(a, b) == 0, "the repeated step differs");
    }

    [Theory]
    [InlineData(WeightType.BF16, false)]
    [InlineData(WeightType.BF16, true)]
    [InlineData(WeightType.F16, false)]
    [InlineData(WeightType.F16, true)]
    public void One_row_16_bit_weights_convert_exactly_in_every_column(WeightType type, bool wide)
    {
        // Every 16-bit pattern, each alone in a 45-column row at column i % 45: the 32- and 16-wide blocks, their
        // even and odd lanes, and the scalar tail all see every value. Activations are 1, so y is the value itself.
        const int cols = 45, count = 1 << 16;
        var weights = new ushort[count * cols];
        for (int i = 0; i < count; i++) weights[i * cols + i % cols] = (ushort)i;
        var x = Enumerable.Repeat(1f, cols).ToArray();
        var y = new float[count];
        bool saved = MatRows.UseVector512, savedPairs = MatRows.UsePairs;
        try
        {
            // Either choice is exact, so a test running alongside sees no difference.
            (MatRows.UsePairs, MatRows.UseVector512) = (true, wide);
            fixed (ushort* wp = weights)
            fixed (float* xp = x)
            fixed (float* yp = y)
                MatRows.MultiplyRange(new WeightMatrix(wp, type, count, cols), xp, 1, yp, count, null, 0, count);
        }
        finally
        {
            (MatRows.UsePairs, MatRows.UseVector512) = (savedPairs, saved);
        }
        for (int i = 0; i < count; i++)
        {
            float expected = type == WeightType.F16
                ? (float)BitConverter.UInt16BitsToHalf((ushort)i)
                : BitConverter.Int32BitsToSingle(i << 16);
            if (y[i] != expected && !(float.IsNaN(expected) && float.IsNaN(y[i])))
                Assert.Fail($"{type} 0x{i:X4} at column {i % cols}: got {y[i]}, expected {expected}");
        }
    }
}
