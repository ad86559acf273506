using PetalsSharp.Models.Kernels;
using Xunit;

namespace PetalsSharp.Tests.Models;

/// <summary>The kernel team: barriers order phases, failures surface without hanging, idle workers wake up.</summary>
public sealed class WorkerTeamTests
{
    /// <summary>Each phase, every worker writes its slot and then reads everyone's: a barrier that let one through early would show a stale phase.</summary>
    sealed class PhaseJob(WorkerTeam team, int phases) : ITeamJob
    {
        public readonly int[] Slots = new int[team.Size];
        public int Errors;

        public void Execute(int worker, int workers)
        {
            for (int p = 1; p <= phases; p++)
            {
                Volatile.Write(ref Slots[worker], p);
                team.Barrier();
                for (int other = 0; other < workers; other++)
                    if (Volatile.Read(ref Slots[other]) != p) Interlocked.Increment(ref Errors);
                team.Barrier();
            }
        }
    }

    [Theory]
    [InlineData(2, 50)]
    [InlineData(3, 50)]
    [InlineData(4, 0)]   // more workers than cores, and no spinning: every job wakes sleeping workers
    public void Barrier_orders_many_phases(int size, int spinMicroseconds)
    {
        using var team = new WorkerTeam(size) { SpinMicroseconds = spinMicroseconds };
        for (int run = 0; run < 50; run++)
        {
            var job = new PhaseJob(team, phases: 200);
            team.Run(job);
            Assert.Equal(0, job.Errors);
            Assert.All(job.Slots, s => Assert.Equal(200, s));
        }
    }

    /// <summary>Worker 1 arrives 5 ms late at every barrier: the others spin out their budget and then block.</summary>
    sealed class LateJob(WorkerTeam team) : ITeamJob
    {
        public int Passed;

        public void Execute(int worker, int workers)
        {
            for (int p = 0; p < 4; p++)
            {
                if (worker == 1) Thread.Sleep(5);
                team.Barrier();
                Interlocked.Increment(ref Passed);
            }
            if (worker == 1) Thread.Sleep(5);   // and finishes late, while the caller waits for the run to end
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Partners_wait_for_a_late_worker_blocked_or_yielding(bool blocking)
    {
        bool saved = WorkerTeam.BlockingWaits;
        WorkerTeam.BlockingWaits = blocking;
        try
        {
            using var team = new WorkerTeam(3);
            for (int run = 0; run < 5; run++)
            {
                var job = new LateJob(team);
                team.Run(job);
                Assert.Equal(3 * 4, job.Passed);
            }
        }
        finally
        {
            WorkerTeam.BlockingWaits = saved;
        }
    }

    sealed class FailingJob(WorkerTeam team, int failing) : ITeamJob
    {
        public int Finished;

        public void Execute(int worker, int workers)
        {
            team.Barrier();
            if (worker == failing) throw new InvalidOperationException($"worker {worker} failed");
            team.Barrier();   // the others wait here for a worker that will never come
            Interlocked.Increment(ref Finished);
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public void A_failing_worker_surfaces_and_the_team_stays_usable(int failing)
    {
        using var team = new WorkerTeam(3);
        var job = new FailingJob(team, failing);
        var e = Assert.Throws<InvalidOperationException>(() => team.Run(job));
        Assert.Equal($"worker {failing} failed", e.Message);
        Assert.Equal(0, job.Finished);
        var next = new PhaseJob(team, phases: 10);
        team.Run(next);
        Assert.Equal(0, next.Errors);
    }

    sealed class NestedJob(WorkerTeam team) : ITeamJob
    {
        public void Execute(int worker, int workers)
        {
            if (worker == 0) team.Run(this);
        }
    }

    [Fact]
    public void A_job_cannot_start_a_job_on_its_own_team()
    {
        using var team = new WorkerTeam(2);
        Assert.Throws<InvalidOperationException>(() => team.Run(new NestedJob(team)));
    }

    [Fact]
    public async Task Concurrent_callers_take_turns()
    {
        using var team = new WorkerTeam(2);
        var callers = Enumerable.Range(0, 4).Select(_ => Task.Run(() =>
        {
            for (int i = 0; i < 100; i++)
            {
                var job = new PhaseJob(team, phases: 5);
                team.Run(job);
                Assert.Equal(0, job.Errors);
            }
        }));
        await Task.WhenAll(callers);
    }

    sealed class ChunkJob(WorkerTeam team, int chunks, bool barrier = false) : ITeamJob
    {
        public readonly int[] Done = new int[chunks];
        int _next;

        public void Execute(int worker, int workers)
        {
            if (barrier) team.Barrier();
            int c;
            while ((c = Interlocked.Increment(ref _next) - 1) < chunks) Interlocked.Increment(ref Done[c]);
        }
    }

    [Theory]
    [InlineData(2, 50)]
    [InlineData(3, 0)]   // workers asleep: the caller may do every chunk, and late workers must skip cleanly
    public void Elastic_jobs_do_every_chunk_once_whoever_joins(int size, int spinMicroseconds)
    {
        using var team = new WorkerTeam(size) { SpinMicroseconds = spinMicroseconds };
        for (int run = 0; run < 2000; run++)
        {
            var job = new ChunkJob(team, chunks: 1 + run % 17);
            if (run % 3 == 0) team.Run(job);
            else team.RunElastic(job);
            Assert.All(job.Done, d => Assert.Equal(1, d));
        }
        var phases = new PhaseJob(team, phases: 10);   // a full-team job right after elastic ones still gets every worker
        team.Run(phases);
        Assert.Equal(0, phases.Errors);
    }

    [Fact]
    public void Elastic_jobs_refuse_barriers()
    {
        using var team = new WorkerTeam(2);
        Assert.Throws<InvalidOperationException>(() => team.RunElastic(new ChunkJob(team, 4, barrier: true)));
    }
    /// <summary>Each worker counts phases; the serial step of the barrier between them must see every worker's count and run once.</summary>
    sealed class SerialJob(WorkerTeam team, int phases, int failAt = -1) : ITeamJob
    {
        public readonly int[] Counts = new int[team.Size];
        public int Serial, Errors;
        Action? _serial;

        public void Execute(int worker, int workers)
        {
            _serial ??= () =>
            {
                int expected = ++Serial;
                for (int w = 0; w < Counts.Length; w++)
                    if (Volatile.Read(ref Counts[w]) != expected) Interlocked.Increment(ref Errors);
                if (expected == failAt) throw new InvalidOperationException("serial step failed");
            };
            for (int p = 0; p < phases; p++)
            {
                Interlocked.Increment(ref Counts[worker]);
                var serial = Volatile.Read(ref _serial);
                team.BarrierThen(serial);
                if (Volatile.Read(ref Serial) != p + 1) Interlocked.Increment(ref Errors);   // released only after it ran
            }
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void A_serial_barrier_step_runs_once_before_the_release(int size)
    {
        using var team = new WorkerTeam(size);
        for (int run = 0; run < 20; run++)
        {
            var job = new SerialJob(team, phases: 100);
            team.Run(job);
            Assert.Equal(0, job.Errors);
            Assert.Equal(100, job.Serial);
        }
    }

    [Fact]
    public void A_failing_serial_step_surfaces_and_the_team_stays_usable()
    {
        using var team = new WorkerTeam(3);
        var job = new SerialJob(team, phases: 10, failAt: 4);
        var e = Assert.Throws<InvalidOperationException>(() => team.Run(job));
        Assert.Equal("serial step failed", e.Message);
        Assert.Equal(4, job.Serial);
        var next = new PhaseJob(team, phases: 10);
        team.Run(next);
        Assert.Equal(0, next.Errors);
    }

    [Fact]
    public void A_prewarmed_team_runs_the_next_job_and_blocks_again_when_none_comes()
    {
        using var team = new WorkerTeam(3) { SpinMicroseconds = 0 };   // idle workers block at once
        var deadline = DateTime.UtcNow.AddSeconds(30);
        void UntilAllBlocked()
        {
            while (team.BlockedWorkers < team.Size - 1)
            {
                Assert.True(DateTime.UtcNow < deadline, "the team's workers never blocked");
                Thread.Sleep(1);
            }
        }
        for (int run = 0; run < 30; run++)
        {
            UntilAllBlocked();
            team.Prewarm(microseconds: run % 3 == 0 ? 0 : 2000);
            if (run % 2 == 0) Thread.Sleep(1);   // the job comes during the spin or after it
            var job = new PhaseJob(team, phases: 20);
            team.Run(job);
            Assert.Equal(0, job.Errors);
        }
        // No job follows: the woken workers spin out the window and block again.
        UntilAllBlocked();
        team.Prewarm(microseconds: 1000);
        UntilAllBlocked();
        var last = new PhaseJob(team, phases: 20);
        team.Run(last);
        Assert.Equal(0, last.Errors);
    }
}
