namespace PetalsSharp.Models.Kernels;

/// <summary>One phase-structured piece of work that every worker of a <see cref="WorkerTeam"/> runs at once.</summary>
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
/// spin-then-wait barrier between phases. A decode step has dozens of small phases per block; a task hand-off per
/// phase (<c>Parallel.For</c>) costs more than the phase itself, while a spinning barrier costs well under a
/// microsecond. Workers spin briefly and then block, so an idle team costs nothing.
/// </summary>
public sealed class WorkerTeam : IDisposable
{
    static readonly Lazy<WorkerTeam> _shared = new(() => new WorkerTeam(Environment.ProcessorCount));

    /// <summary>The process-wide team, one worker per core.</summary>
    public static WorkerTeam Shared => _shared.Value;

    readonly Thread[] _threads;
    readonly SemaphoreSlim[] _wake;
    readonly object _runLock = new();
    ITeamJob? _job;
    int _arrived, _generation, _done;
    Exception? _error;
    volatile bool _disposed;

    public WorkerTeam(int size)
    {
        Size = Math.Max(1, size);
        _threads = new Thread[Size - 1];
        _wake = new SemaphoreSlim[Size - 1];
        for (int i = 0; i < _threads.Length; i++)
        {
            int worker = i + 1;
            _wake[i] = new SemaphoreSlim(0);
            _threads[i] = new Thread(() => Loop(worker)) { IsBackground = true, Name = $"petals-team-{worker}" };
            _threads[i].Start();
        }
    }

    /// <summary>Workers in the team, the caller included.</summary>
    public int Size { get; }

    /// <summary>
    /// Runs <paramref name="job"/> on every worker and returns when all have finished; the calling thread is worker 0.
    /// One job at a time: concurrent callers queue. An exception on any worker is rethrown here.
    /// </summary>
    public void Run(ITeamJob job)
    {
        lock (_runLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _job = job;
            _error = null;
            Volatile.Write(ref _done, 0);
            foreach (var w in _wake) w.Release();
            Execute(0);
            var spin = new SpinWait();
            while (Volatile.Read(ref _done) < Size - 1) spin.SpinOnce(sleep1Threshold: -1);
            _job = null;
            if (_error is { } e) throw new AggregateException("a worker of the kernel team failed", e);
        }
    }

    /// <summary>
    /// Waits until every worker of the running job has arrived. Call it the same number of times on every worker.
    /// </summary>
    public void Barrier()
    {
        if (Size == 1) return;
        int generation = Volatile.Read(ref _generation);
        if (Interlocked.Increment(ref _arrived) == Size)
        {
            Volatile.Write(ref _arrived, 0);
            Interlocked.Increment(ref _generation);
            return;
        }
        var spin = new SpinWait();
        while (Volatile.Read(ref _generation) == generation) spin.SpinOnce(sleep1Threshold: -1);
    }

    void Execute(int worker)
    {
        try
        {
            _job!.Execute(worker, Size);
        }
        catch (Exception e)
        {
            // A failed worker still leaves the barrier protocol consistent only if every worker fails alike; jobs are
            // expected to validate before their first barrier, so this records the first error for the caller.
            Interlocked.CompareExchange(ref _error, e, null);
        }
    }

    void Loop(int worker)
    {
        var wake = _wake[worker - 1];
        while (true)
        {
            wake.Wait();
            if (_disposed) return;
            Execute(worker);
            Interlocked.Increment(ref _done);
        }
    }

    public void Dispose()
    {
        _disposed = true;
        foreach (var w in _wake) w.Release();
    }
}
