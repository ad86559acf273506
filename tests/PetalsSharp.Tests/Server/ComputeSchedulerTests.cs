using PetalsSharp.Server;
using Xunit;

namespace PetalsSharp.Tests.Server;

/// <summary>Priorities of the compute thread, checked by order of completion only (no timing).</summary>
public sealed class ComputeSchedulerTests
{
    [Fact]
    public async Task An_inference_step_waits_only_for_the_running_task()
    {
        using var scheduler = new ComputeScheduler();
        var order = new List<string>();
        using var started = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        var running = scheduler.RunAsync(ComputeScheduler.ForwardBackwardPriority, () =>
        {
            started.Set();
            release.Wait();
            lock (order) order.Add("running forward");
            return 0;
        });
        started.Wait();
        var queued = Enumerable.Range(1, 3).Select(i => scheduler.RunAsync(ComputeScheduler.ForwardBackwardPriority, () =>
        {
            lock (order) order.Add($"forward {i}");
            return i;
        })).ToList();
        var step = scheduler.RunAsync(ComputeScheduler.InferencePriority, () => { lock (order) order.Add("step"); return 0; });
        var step2 = scheduler.RunAsync(ComputeScheduler.InferencePriority, () => { lock (order) order.Add("step 2"); return 0; });
        Assert.Equal(5, scheduler.QueueLength);
        release.Set();
        await Task.WhenAll(queued.Append(running).Append(step).Append(step2));
        Assert.Equal(["running forward", "step", "step 2", "forward 1", "forward 2", "forward 3"], order);
    }

    [Fact]
    public async Task Joinable_work_queued_together_runs_as_one_group_per_key_within_the_row_limit()
    {
        using var scheduler = new ComputeScheduler();
        var groups = new List<string>();
        (string? Value, Exception? Error)[] Run(IReadOnlyList<string> inputs)
        {
            lock (groups) groups.Add(string.Join(",", inputs));
            return inputs.Select(i => i == "bad" ? (null, new InvalidOperationException("bad step")) : (i + "!", (Exception?)null)).ToArray();
        }
        using var started = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        var blocker = scheduler.RunAsync(ComputeScheduler.InferencePriority, () => { started.Set(); release.Wait(); return 0; });
        started.Wait();
        using var cancel = new CancellationTokenSource();
        Task<string> Join(string key, string input, int rows = 1, CancellationToken ct = default) =>
            scheduler.RunJoinableAsync<string, string>(ComputeScheduler.InferencePriority, key, rows, maxRows: 4, input, Run, input, ct);
        var a1 = Join("a", "a1");
        var b1 = Join("b", "b1");
        var a2 = Join("a", "a2", ct: cancel.Token);
        var a3 = Join("a", "bad");
        var a4 = Join("a", "a4", rows: 2);
        var a5 = Join("a", "a5");   // a1 + bad + a4 fill the 4 rows (a2 is cancelled before the run): a later group
        var b2 = Join("b", "b2");
        cancel.Cancel();
        release.Set();
        await blocker;
        Assert.Equal("a1!", await a1);
        Assert.Equal("a4!", await a4);
        Assert.Equal("bad step", (await Assert.ThrowsAsync<InvalidOperationException>(() => a3)).Message);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => a2);
        Assert.Equal(["b1!", "b2!", "a5!"], [await b1, await b2, await a5]);
        Assert.Equal(["a1,bad,a4", "b1,b2", "a5"], groups);
        Assert.Equal((3L, 6L), scheduler.Joined);
    }

    [Fact]
    public async Task A_busy_queue_trims_the_heap_only_after_reference_path_work()
    {
        // Each joinable step queues the next before it ends, so the queue never idles (steady decode). With
        // withPrefill, the first step also queues plain work (a prefill chunk on the reference path) behind it.
        static async Task RunStepsUntil(ComputeScheduler scheduler, bool withPrefill, Func<bool> done)
        {
            var deadline = DateTime.UtcNow.AddMinutes(2);
            var finished = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            void Queue(bool first) => _ = scheduler.RunJoinableAsync<int, int>(ComputeScheduler.InferencePriority, "span", 1, 4, 0, inputs =>
            {
                if (first && withPrefill) _ = scheduler.RunAsync(ComputeScheduler.InferencePriority, () => 0);
                if (done() || DateTime.UtcNow > deadline) finished.TrySetResult();
                else Queue(false);
                return inputs.Select(i => (i, (Exception?)null)).ToArray();
            });
            Queue(true);
            await finished.Task;
        }

        using (var decodeOnly = new ComputeScheduler())
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            await RunStepsUntil(decodeOnly, withPrefill: false, () => clock.Elapsed > TimeSpan.FromSeconds(1.5));
            Assert.Equal(0L, decodeOnly.Trims.Busy);   // fused steps free nothing: no trim while decoding
        }
        using var withPrefill = new ComputeScheduler();
        await RunStepsUntil(withPrefill, withPrefill: true, () => withPrefill.Trims.Busy > 0);
        Assert.True(withPrefill.Trims.Busy > 0, "what the prefill freed was never trimmed while decoding went on");
        Assert.Equal(0L, withPrefill.Trims.Idle);
    }

    [Fact]
    public async Task Exceptions_and_cancellation_reach_the_caller_and_the_thread_survives()
    {
        using var scheduler = new ComputeScheduler();
        var failed = scheduler.RunAsync<int>(0, () => throw new InvalidOperationException("boom"));
        Assert.Equal("boom", (await Assert.ThrowsAsync<InvalidOperationException>(() => failed)).Message);

        using var release = new ManualResetEventSlim();
        using var started = new ManualResetEventSlim();
        var blocker = scheduler.RunAsync(1, () => { started.Set(); release.Wait(); return 1; });
        started.Wait();
        using var cts = new CancellationTokenSource();
        bool ran = false;
        var cancelled = scheduler.RunAsync(0, () => ran = true, cts.Token);
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => cancelled);
        release.Set();
        Assert.Equal(1, await blocker);
        Assert.Equal(42, await scheduler.RunAsync(0, () => 42));
        Assert.False(ran);
    }

    [Fact]
    public async Task Dispose_cancels_queued_work()
    {
        var scheduler = new ComputeScheduler();
        using var release = new ManualResetEventSlim();
        using var started = new ManualResetEventSlim();
        var blocker = scheduler.RunAsync(1, () => { started.Set(); release.Wait(); return 1; });
        started.Wait();
        var queued = scheduler.RunAsync(1, () => 2);
        var disposing = Task.Run(scheduler.Dispose);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => queued);
        release.Set();
        await disposing;
        Assert.Equal(1, await blocker);
        Assert.Throws<ObjectDisposedException>(() => { _ = scheduler.RunAsync(0, () => 3); });
    }
}
