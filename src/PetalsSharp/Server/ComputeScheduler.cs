namespace PetalsSharp.Server;

/// <summary>
/// The one thread that runs model compute. Work waits in a priority queue (lower number first, FIFO within a
/// priority), so an inference step queued behind a long forward/backward waits only for the task already
/// running, as with Petals' prioritized task pools. One thread also keeps torch's thread-local state (dispose
/// scopes, grad mode) in one place and lets libtorch's intra-op threads use every core for each task.
/// </summary>
public sealed class ComputeScheduler : IDisposable
{
    /// <summary>Priority of inference steps (served first).</summary>
    public const int InferencePriority = 0;

    /// <summary>Priority of cache-free forward and backward passes.</summary>
    public const int ForwardBackwardPriority = 1;

    readonly PriorityQueue<WorkItem, (int Priority, long Sequence)> _queue = new();
    readonly Thread _thread;
    long _sequence;
    bool _stopping;
    bool _untrimmed;

    /// <summary>
    /// Idle time after which the native heap is trimmed, if work ran since the last trim: what a prefill or a backward
    /// freed goes back to the kernel instead of holding the server at its high-water mark. Steady decode never leaves
    /// the queue empty this long, so it never pays for a trim.
    /// </summary>
    const int TrimAfterIdleMs = 250;

    /// <param name="name">Thread name, for debuggers and dumps.</param>
    public ComputeScheduler(string name = "petals-compute")
    {
        _thread = new Thread(Loop) { IsBackground = true, Name = name };
        _thread.Start();
    }

    /// <summary>Tasks waiting to run (not counting the one running).</summary>
    public int QueueLength { get { lock (_queue) return _queue.Count; } }

    /// <summary>
    /// Queues <paramref name="work"/>. Cancelling removes work that has not started; work that has started runs
    /// to completion, so whatever it uses (tensors, caches) stays valid until the returned task completes.
    /// </summary>
    public Task<T> RunAsync<T>(int priority, Func<T> work, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(work);
        var item = new WorkItem<T>(work);
        if (cancellationToken.IsCancellationRequested) return Task.FromCanceled<T>(cancellationToken);
        // Registered before the item is visible to the worker, so Run always sees the registration it must drop.
        if (cancellationToken.CanBeCanceled)
            item.Registration = cancellationToken.Register(() => item.TryCancel(cancellationToken));
        lock (_queue)
        {
            if (_stopping)
            {
                item.Registration.Dispose();
                throw new ObjectDisposedException(nameof(ComputeScheduler));
            }
            _queue.Enqueue(item, (priority, _sequence++));
            Monitor.Pulse(_queue);
        }
        return item.Task;
    }

    void Loop()
    {
        while (true)
        {
            WorkItem? item = null;
            lock (_queue)
            {
                while (_queue.Count == 0 && !_stopping)
                {
                    if (!_untrimmed) Monitor.Wait(_queue);
                    else if (!Monitor.Wait(_queue, TrimAfterIdleMs) && _queue.Count == 0) break;
                }
                if (_queue.Count > 0) item = _queue.Dequeue();
                else if (_stopping) return;
            }
            if (item is null)
            {
                // Outside the lock: a trim walks the whole heap, and callers queueing work must not wait for it.
                NativeHeap.Trim();
                _untrimmed = false;
                continue;
            }
            item.Run();
            _untrimmed = true;
        }
    }

    /// <summary>Cancels queued work, lets the running task finish and stops the thread.</summary>
    public void Dispose()
    {
        List<WorkItem> pending;
        lock (_queue)
        {
            if (_stopping) return;
            _stopping = true;
            pending = _queue.UnorderedItems.Select(e => e.Element).ToList();
            _queue.Clear();
            Monitor.Pulse(_queue);
        }
        foreach (var p in pending) p.TryCancel(new CancellationToken(canceled: true));
        if (Thread.CurrentThread != _thread) _thread.Join();
    }

    abstract class WorkItem
    {
        const int Pending = 0, Running = 1, Cancelled = 2;
        int _state;
        public CancellationTokenRegistration Registration;

        public void Run()
        {
            if (Interlocked.CompareExchange(ref _state, Running, Pending) != Pending) return;
            Registration.Dispose();
            Execute();
        }

        public void TryCancel(CancellationToken token)
        {
            if (Interlocked.CompareExchange(ref _state, Cancelled, Pending) == Pending) SetCanceled(token);
        }

        protected abstract void Execute();
        protected abstract void SetCanceled(CancellationToken token);
    }

    sealed class WorkItem<T>(Func<T> work) : WorkItem
    {
        readonly TaskCompletionSource<T> _tcs = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public Task<T> Task => _tcs.Task;

        protected override void Execute()
        {
            try { _tcs.TrySetResult(work()); }
            catch (Exception e) { _tcs.TrySetException(e); }
        }

        protected override void SetCanceled(CancellationToken token) => _tcs.TrySetCanceled(token);
    }
}
