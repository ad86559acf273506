using System.Diagnostics;
using System.Runtime.ExceptionServices;

namespace PetalsSharp.Models.Kernels;

/// <summary>One phase-structured piece of work that every worker of a <see cref="WorkerTeam"/> runs at once.</summary>
/// <remarks>
/// What a job must do so that a failure cannot hang the team: wait for other workers only through
/// <see cref="WorkerTeam.Barrier"/> (never a lock, event or spin of its own), call it the same number of times on
/// every worker, and let exceptions propagate (a catch-all around a barrier would swallow the team's abort).
/// </remarks>
public interface ITeamJob
{
    /// <summary>
    /// Runs on every worker (<paramref name="worker"/> in [0, <paramref name="workers"/>)); the caller is worker 0.
    /// Phases that read what another worker wrote are separated by <see cref="WorkerTeam.Barrier"/>.
    /// </summary>
    void Execute(int worker, int workers);
}

/// <summary>
/// A fixed team of threads, created once and sized to the cores, that runs a job on every worker and meets at a
/// spin barrier between phases. A decode step has dozens of small phases per block; a task hand-off per phase
/// (<c>Parallel.For</c>) costs more than the phase itself, while a spinning barrier costs well under a microsecond.
/// </summary>
/// <remarks>
/// <para>Idle workers spin for <see cref="SpinMicroseconds"/> after a job (the next op of a decode step follows within
/// microseconds), then block on a monitor, so an idle team costs no CPU and leaves the cores to gRPC and the rest of
/// the server. The team has one worker per core, the caller included: a server's other threads only run while the
/// team is idle or blocked, which is what decode wants (the step is the work).</para>
/// <para>Failure: when a worker's job throws, the team is marked faulted, every other worker's next (or current)
/// <see cref="Barrier"/> throws an internal abort that unwinds it, and <see cref="Run"/> rethrows the first exception
/// once all workers are back. The team stays usable.</para>
/// </remarks>
public sealed partial class WorkerTeam : IDisposable
{
    static readonly Lazy<WorkerTeam> _shared = new(() => new WorkerTeam(Environment.ProcessorCount));

    /// <summary>The process-wide team, one worker per core.</summary>
    public static WorkerTeam Shared => _shared.Value;

    [ThreadStatic] static WorkerTeam? t_inJob;   // the team whose job this thread is running, to refuse nested Runs

    readonly Thread[] _threads;
    readonly object _runLock = new(), _gate = new();
    ITeamJob? _job;
    int _posted;          // job sequence number; idle workers wait for it to move
    int _sleepers;        // workers blocked on _gate (Run pulses only when there are some)
    int _done;            // workers other than the caller that finished the current job
    int _arrived, _generation;
    long _entry;          // job number << 32 | workers that joined it (| Closed once an elastic job stops taking them)
    const long Closed = 1L << 31;
    volatile bool _elastic, _faulted;
    Exception? _error;
    volatile bool _disposed;
    long _spinTicks;

    public WorkerTeam(int size)
    {
        Size = Math.Max(1, size);
        SpinMicroseconds = 50;
        _threads = new Thread[Size - 1];
        for (int i = 0; i < _threads.Length; i++)
        {
            int worker = i + 1;
            _threads[i] = new Thread(() => Loop(worker)) { IsBackground = true, Name = $"petals-team-{worker}" };
            _threads[i].Start();
        }
    }

    /// <summary>Workers in the team, the caller included.</summary>
    public int Size { get; }

    /// <summary>How long an idle worker keeps spinning for the next job before it blocks (0: block at once).</summary>
    public int SpinMicroseconds
    {
        get => (int)(Volatile.Read(ref _spinTicks) * 1_000_000 / Stopwatch.Frequency);
        set => Volatile.Write(ref _spinTicks, Math.Max(0, value) * Stopwatch.Frequency / 1_000_000);
    }

    /// <summary>
    /// Runs <paramref name="job"/> on every worker and returns when all have finished; the calling thread is worker 0.
    /// One job at a time: concurrent callers queue. The first exception of any worker is rethrown here. A job may not
    /// call <see cref="Run"/> on its own team.
    /// </summary>
    public void Run(ITeamJob job) => Post(job, elastic: false);

    /// <summary>
    /// Runs <paramref name="job"/> on the caller and on the workers that join before the caller's own
    /// <see cref="ITeamJob.Execute"/> returns; later ones skip it. For jobs without barriers that claim their work
    /// dynamically (a shared counter of chunks): a worker that is asleep or descheduled (a busy server, gRPC threads
    /// on the same cores) then delays nothing, and a worker that wakes late still takes the chunks left.
    /// </summary>
    public void RunElastic(ITeamJob job) => Post(job, elastic: true);

    void Post(ITeamJob job, bool elastic)
    {
        if (t_inJob == this) throw new InvalidOperationException("a team job cannot start another job on its own team");
        lock (_runLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _job = job;
            _elastic = elastic;
            _error = null;
            _faulted = false;
            _arrived = 0;
            _done = 0;
            int number = _posted + 1;
            Volatile.Write(ref _entry, (long)number << 32);
            Interlocked.Increment(ref _posted);   // a full fence: workers that see the new number see the fields above
            if (Volatile.Read(ref _sleepers) > 0)
                lock (_gate) Monitor.PulseAll(_gate);
            var profile = Profile;
            if (profile is not null) profile.BeginJob();
            t_profile = profile;
            try
            {
                Execute(0);
            }
            finally
            {
                t_profile = null;
            }
            profile?.Phase(waited: false);
            // An elastic job closes its door now and waits only for the workers that came in.
            int expected = elastic ? (int)(Interlocked.Or(ref _entry, Closed) & (Closed - 1)) : Size - 1;
            var wait = new Waiter(this);
            while (Volatile.Read(ref _done) < expected)
                if (!wait.Pause()) BlockWhile(static (t, n) => Volatile.Read(ref t._done) < n, expected);
            profile?.Phase(waited: true);
            _job = null;
            if (_error is { } e) ExceptionDispatchInfo.Throw(e);
        }
    }

    /// <summary>
    /// Waits until every worker of the running job has arrived. Call it the same number of times on every worker.
    /// Throws (to unwind this worker) when another worker's job has failed.
    /// </summary>
    public void Barrier() => BarrierThen(null);

    /// <summary>
    /// <see cref="Barrier"/>, and the last worker to arrive runs <paramref name="serial"/> before any is released: a
    /// serial step between phases (switching a fused step to its next block) without a second barrier. When it
    /// throws, the team is faulted and every worker unwinds.
    /// </summary>
    public void BarrierThen(Action? serial)
    {
        if (Size == 1)
        {
            serial?.Invoke();
            return;
        }
        if (_elastic) throw new InvalidOperationException("an elastic job cannot use barriers: not every worker runs it");
        var profile = t_profile;   // set on the caller (worker 0) only, and only while profiling
        profile?.Phase(waited: false);
        try
        {
            Arrive(serial);
        }
        finally
        {
            profile?.Phase(waited: true);
        }
    }

    void Arrive(Action? serial)
    {
        int generation = Volatile.Read(ref _generation);
        if (Interlocked.Increment(ref _arrived) == Size)
        {
            try
            {
                serial?.Invoke();
            }
            catch
            {
                _faulted = true;   // set before the release, so the others unwind instead of running on a half-made state
                throw;
            }
            finally
            {
                Volatile.Write(ref _arrived, 0);
                Interlocked.Increment(ref _generation);
                WakeBlocked();
            }
            return;
        }
        var wait = new Waiter(this);
        while (Volatile.Read(ref _generation) == generation)
        {
            if (_faulted) throw new TeamAborted();
            if (!wait.Pause()) BlockWhile(static (t, g) => Volatile.Read(ref t._generation) == g && !t._faulted, generation);
        }
        if (serial is not null && _faulted) throw new TeamAborted();
    }

    void Execute(int worker)
    {
        var outer = t_inJob;
        t_inJob = this;
        try
        {
            _job!.Execute(worker, Size);
        }
        catch (TeamAborted)
        {
            // Another worker failed first; its exception is the one Run reports.
        }
        catch (Exception e)
        {
            Interlocked.CompareExchange(ref _error, e, null);
            _faulted = true;
            WakeBlocked();
        }
        finally
        {
            t_inJob = outer;
        }
    }

    void Loop(int worker)
    {
        int seen = 0;
        while (true)
        {
            seen = WaitForJob(seen);
            if (_disposed) return;
            if (!Enter(seen)) continue;
            Execute(worker);
            Interlocked.Increment(ref _done);
            WakeBlocked();
        }
    }

    /// <summary>Joins job <paramref name="number"/>; false when an elastic job closed (or a newer one was posted) first.</summary>
    bool Enter(int number)
    {
        while (true)
        {
            long entry = Volatile.Read(ref _entry);
            if ((int)(entry >> 32) != number || (entry & Closed) != 0) return false;
            if (Interlocked.CompareExchange(ref _entry, entry + 1, entry) == entry) return true;
        }
    }

    /// <summary>Spins, then blocks, until a job newer than <paramref name="seen"/> is posted; returns its number.</summary>
    int WaitForJob(int seen)
    {
        long start = Stopwatch.GetTimestamp();
        while (Volatile.Read(ref _posted) == seen && !_disposed)
        {
            long now = Stopwatch.GetTimestamp();
            if (now - start < Volatile.Read(ref _spinTicks) || now < Volatile.Read(ref _spinUntil))
            {
                Thread.SpinWait(16);
                continue;
            }
            lock (_gate)
            {
                // Interlocked on both sides (here and in Run, Prewarm) orders the count against the job number: either
                // Run sees a sleeper and pulses, or this loop sees the new job before waiting.
                Interlocked.Increment(ref _sleepers);
                while (Volatile.Read(ref _posted) == seen && !_disposed && Stopwatch.GetTimestamp() >= Volatile.Read(ref _spinUntil))
                    Monitor.Wait(_gate);
                Interlocked.Decrement(ref _sleepers);
            }
        }
        return Volatile.Read(ref _posted);
    }

    public void Dispose()
    {
        _disposed = true;
        lock (_gate) Monitor.PulseAll(_gate);
    }

    sealed class TeamAborted : Exception
    {
        public TeamAborted() : base("another worker of the kernel team failed") { }
    }
}
