using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Tests.Models;
using PetalsSharp.Wire;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Server;

/// <summary>
/// The server's step path (<see cref="StepBatcher"/>) on a real compute thread: a long prefill runs in chunks that give
/// the whole step's output, and a decoding session's step queued behind it runs between its chunks. Order only, no
/// timing: the compute thread is held until everything is queued.
/// </summary>
public sealed class StepBatcherTests
{
    [Fact]
    public async Task A_long_prefill_runs_in_chunks_with_the_same_output_and_lets_decoding_sessions_in_between()
    {
        using var ckpt = Checkpoint.Open(TestData.Path("llama-gqa"));
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers, ScalarType.Float32);
        using var scheduler = new ComputeScheduler();
        using var chunked = new StepBatcher(scheduler, prefillChunkRows: 8);
        int hidden = stack.Config.HiddenSize;
        manual_seed(3);
        using var prompt = randn(2, 19, hidden);                                             // [2, 19, H]: chunks of 4 tokens
        using var decodeIn = randn(1, 1, hidden);                                            // [1, 1, H]
        using var whole = (LocalBlockSession)stack.OpenSession(new SessionOptions(2, 32));
        using var parts = (LocalBlockSession)stack.OpenSession(new SessionOptions(2, 32));
        using var decoding = (LocalBlockSession)stack.OpenSession(new SessionOptions(1, 32));
        using var expected = RunReference(whole, prompt);

        var (output, prefilledWhenDecoded) = await PrefillWithDecodeQueuedAsync(scheduler, chunked, parts, prompt, decoding, decodeIn);

        Assert.Equal(4, prefilledWhenDecoded);   // one chunk of 4 tokens (8 rows ÷ batch 2), not all 19
        Assert.Equal(19, parts.Position);
        using var got = TensorCodec.Decode(output, "hidden");                                // [2, 19, H]
        FusedParity.Close(expected, got, "chunked prefill");
        // Decoding on after the chunks matches decoding on after the whole prefill.
        using var next = randn(2, 1, hidden);
        using (no_grad()) FusedParity.Close(whole.Step(next),
            TensorCodec.Decode(await chunked.RunAsync(parts, next, new StepOptions(), PetalsSharp.Wire.V1.Compression.None, CancellationToken.None), "hidden"),
            "the step after the prefill");
    }

    /// <summary>
    /// A long prompt's last chunk of a short prompt's size (here 120 tokens in chunks of 80: 80 + 40) stays on the
    /// reference like the chunks before it, so the session keeps no fused scratch of its own.
    /// </summary>
    [Fact]
    public async Task A_long_prompts_short_last_chunk_stays_on_the_reference()
    {
        using var ckpt = Checkpoint.Open(TestData.Path("llama-gqa"));
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers, ScalarType.Float32);
        using var scheduler = new ComputeScheduler();
        using var chunked = new StepBatcher(scheduler, prefillChunkRows: 80);
        manual_seed(5);
        using var prompt = randn(1, 120, stack.Config.HiddenSize);                          // [1, 120, H]
        using var whole = (LocalBlockSession)stack.OpenSession(new SessionOptions(1, 128));
        using var parts = (LocalBlockSession)stack.OpenSession(new SessionOptions(1, 128));
        using var expected = RunReference(whole, prompt);
        var output = await chunked.RunAsync(parts, prompt, new StepOptions(), PetalsSharp.Wire.V1.Compression.None, CancellationToken.None);
        using var got = TensorCodec.Decode(output, "hidden");                                // [1, 120, H]
        Assert.Equal((120, 0, false), (parts.Position, parts.FusedSteps, parts.HasOwnScratch));
        FusedParity.Close(expected, got, "a long prompt in chunks of 80 and 40 tokens");
    }

    [Theory]
    [InlineData(40, 16)]   // a short prompt: fused steps of 16 rows (16 + 16 + 8), decoding sessions in between
    [InlineData(70, 70)]   // past ShortPromptRows: one libtorch step, as before
    public async Task A_short_prompt_runs_as_fused_steps_of_sixteen_rows_with_the_reference_output(int tokens, int doneWhenDecoded)
    {
        using var ckpt = Checkpoint.Open(TestData.Path("llama-gqa"));
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers, ScalarType.Float32);
        using var scheduler = new ComputeScheduler();
        using var batcher = new StepBatcher(scheduler);
        manual_seed(4);
        using var prompt = randn(1, tokens, stack.Config.HiddenSize);                       // [1, T, H]
        using var decodeIn = randn(1, 1, stack.Config.HiddenSize);                           // [1, 1, H]
        using var whole = (LocalBlockSession)stack.OpenSession(new SessionOptions(1, 80));
        using var parts = (LocalBlockSession)stack.OpenSession(new SessionOptions(1, 80));
        using var decoding = (LocalBlockSession)stack.OpenSession(new SessionOptions(1, 8));
        using var expected = RunReference(whole, prompt);

        var (output, prefilledWhenDecoded) = await PrefillWithDecodeQueuedAsync(scheduler, batcher, parts, prompt, decoding, decodeIn);
        using var got = TensorCodec.Decode(output, "hidden");                                // [1, T, H]

        Assert.Equal(doneWhenDecoded, prefilledWhenDecoded);
        Assert.Equal(tokens, parts.Position);
        Assert.False(parts.HasOwnScratch, "prompt chunks run on the server's shared joint step, not a scratch of the session's own");
        FusedParity.Close(expected, got, $"a {tokens}-token prompt");
    }

    /// <summary>The prompt through libtorch in one step (more rows than the fused kernels take).</summary>
    static Tensor RunReference(LocalBlockSession session, Tensor prompt)
    {
        using var noGrad = no_grad();
        using var reference = PetalsSharp.Models.Kernels.FusedDecode.Disable();
        return session.Step(prompt);                                                          // [B, T, H]
    }

    /// <summary>
    /// Holds the compute thread, queues the prompt of <paramref name="parts"/>, then a decode step of
    /// <paramref name="decoding"/>, then a probe of how far the prompt had got when that step ran; releases the thread
    /// and returns the prompt's encoded output and the probe.
    /// </summary>
    static async Task<(PetalsSharp.Wire.V1.Tensor Output, int PrefilledWhenDecoded)> PrefillWithDecodeQueuedAsync(ComputeScheduler scheduler,
        StepBatcher batcher, LocalBlockSession parts, Tensor prompt, LocalBlockSession decoding, Tensor decodeIn)
    {
        using var started = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        var blocker = scheduler.RunAsync(ComputeScheduler.InferencePriority, () => { started.Set(); release.Wait(); return 0; });
        started.Wait();
        var prefill = batcher.RunAsync(parts, prompt, new StepOptions(), PetalsSharp.Wire.V1.Compression.None, CancellationToken.None);
        var decode = batcher.RunAsync(decoding, decodeIn, new StepOptions(), PetalsSharp.Wire.V1.Compression.None, CancellationToken.None);
        var prefilledWhenDecoded = scheduler.RunAsync(ComputeScheduler.InferencePriority, () => parts.Position);
        release.Set();
        await blocker;
        var output = await prefill;
        await decode;
        return (output, await prefilledWhenDecoded);
    }
}
