using System.Diagnostics;

namespace PetalsSharp.Models.Kernels;

// How the team's workers wait: at barriers and at the end of a run (spin, then block), and between jobs (Prewarm).
public sealed partial class WorkerTeam
{
    /// <summary>
    /// Whether a worker that has spun for <see cref="SpinMicroseconds"/> at a barrier or at the end of a run blocks
    /// (the default) rather than yielding in a loop. A partner that is not running has lost its core to another
    /// thread; a yield keeps this core busy, so the scheduler leaves the partner queued behind that thread for up to a
    /// time slice, while a blocked waiter leaves its core idle and the partner is pulled onto it at once. Measured on
    /// three server processes and a client sharing 2 cores (2026-12-04): a 4-block step took 2.2 ms at the median and
    /// 5.1–5.8 ms at the 90th percentile with yielding. <c>PETALS_TEAM_BLOCK=0</c> restores the yield, for an A/B.
    /// </summary>
    public static bool BlockingWaits { get; set; } = Environment.GetEnvironmentVariable("PETALS_TEAM_BLOCK") != "0";

    readonly object _waitGate = new();
    int _blocked;   // waiters blocked on _waitGate

    /// <summary>Blocks while <paramref name="waiting"/> holds (re-checked on every wake-up; a fault wakes everyone).</summary>
    void BlockWhile(Func<WorkerTeam, int, bool> waiting, int arg)
    {
        lock (_waitGate)
        {
            // Interlocked on both sides (here and in WakeBlocked's callers) orders the count against the condition:
            // either the releaser sees a blocked waiter and pulses, or this check sees the release.
            Interlocked.Increment(ref _blocked);
            try
            {
                // The timeout is a safety net only; every release pulses.
                while (waiting(this, arg)) Monitor.Wait(_waitGate, 50);
            }
            finally
            {
                Interlocked.Decrement(ref _blocked);
            }
        }
    }

    void WakeBlocked()
    {
        if (Volatile.Read(ref _blocked) > 0)
            lock (_waitGate) Monitor.PulseAll(_waitGate);
    }

    /// <summary>
    /// How a worker waits for the others: a pure spin (no yield) for up to <see cref="SpinMicroseconds"/>, since a phase
    /// imbalance is microseconds and a yield on a busy box can hand the core away for a whole time slice; past that,
    /// <see cref="Pause"/> returns false and the caller blocks (<see cref="BlockingWaits"/>), or it yields.
    /// </summary>
    struct Waiter(WorkerTeam team)
    {
        SpinWait _spin;
        long _start;
        int _count;

        /// <summary>Spins or yields once; false when the spin budget is spent and the caller should block instead.</summary>
        public bool Pause()
        {
            if (_spin.Count == 0)
            {
                long budget = Volatile.Read(ref team._spinTicks);
                if (_count++ == 0) _start = Stopwatch.GetTimestamp();
                if (budget > 0 && ((_count & 63) != 0 || Stopwatch.GetTimestamp() - _start < budget))
                {
                    Thread.SpinWait(8);
                    return true;
                }
            }
            if (BlockingWaits) return false;
            _spin.SpinOnce(sleep1Threshold: -1);
            return true;
        }
    }

    long _spinUntil;   // Stopwatch timestamp before which idle workers spin rather than block (Prewarm)

    /// <summary>
    /// Tells idle workers that a job is coming within <paramref name="microseconds"/>: blocked ones wake now and spin
    /// until it is posted or the time is up, then block again. A server calls it once a step has passed its checks, so
    /// the wake-up of a worker that blocked since the last step overlaps the hand-off to the compute thread instead of
    /// delaying the job's first barrier. Costs at most that much spinning when no job follows (an invalid step never
    /// gets this far). Does nothing while no worker is blocked.
    /// </summary>
    public void Prewarm(int microseconds = 1000)
    {
        // Only a blocked team is woken: a busy server's workers are still spinning from the last job, and extending
        // their spin on every arriving step would keep a core busy that its gRPC threads need.
        if (Size == 1 || !PrewarmEnabled || Volatile.Read(ref _sleepers) == 0) return;
        Volatile.Write(ref _spinUntil, Stopwatch.GetTimestamp() + microseconds * Stopwatch.Frequency / 1_000_000);
        lock (_gate) Monitor.PulseAll(_gate);
    }

    /// <summary>Workers blocked while waiting for a job (tests watch a prewarmed team go back to sleep).</summary>
    internal int BlockedWorkers => Volatile.Read(ref _sleepers);

    /// <summary>Whether <see cref="Prewarm"/> does anything (<c>PETALS_PREWARM=0</c>: no, for an A/B).</summary>
    public static bool PrewarmEnabled { get; set; } = Environment.GetEnvironmentVariable("PETALS_PREWARM") != "0";
}
