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

    /// <summary>
    /// Least time between trims while the queue stays busy. Sessions decoding keep the queue from ever idling, so
    /// what the prefills of sessions joining them freed would stay resident for as long as the others decode (eight
    /// 32-token prefills on four 8B-shaped bf16 blocks left 130 MB in glibc's arenas, 7 % of the server). Only
    /// reference-path work (prefill chunks, forward/backward) frees such memory; fused steps allocate nothing, so
    /// steady decode still never trims.
    /// </summary>
    const int TrimWhileBusyEveryMs = 1000;
    bool _heavySinceTrim;
    long _lastTrim, _idleTrims, _busyTrims;

    /// <summary>Heap trims so far: after the queue idled, and between work while it stayed busy (a gauge for tests).</summary>
    public (long Idle, long Busy) Trims => (Interlocked.Read(ref _idleTrims), Interlocked.Read(ref _busyTrims));

    readonly Action? _onIdle;

    /// <param name="name">Thread name, for debuggers and dumps.</param>
    /// <param name="onIdle">Runs on the compute thread before the idle heap trim: what the server frees then (the KV
    /// pages closed sessions left in the pool) goes back to the kernel with it.</param>
    public ComputeScheduler(string name = "petals-compute", Action? onIdle = null)
    {
        _onIdle = onIdle;
        _countRun = items =>
        {
            Interlocked.Increment(ref _joinedRuns);
            Interlocked.Add(ref _joinedItems, items);
        };
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
        Enqueue(item, priority, cancellationToken);
        return item.Task;
    }

    /// <summary>
    /// Queues <paramref name="input"/> as work that may share one run with other queued work of the same
    /// <paramref name="key"/> and priority: when the first of them reaches the front, every such item queued by then
    /// joins it, up to <paramref name="maxRows"/> rows in all, and <paramref name="runGroup"/> runs them together
    /// (continuous batching: sessions join and leave between runs). It returns one outcome per input, in order.
    /// Cancelling drops an item that has not started, as with <see cref="RunAsync{T}"/>.
    /// </summary>
    public Task<TOut> RunJoinableAsync<TIn, TOut>(int priority, object key, int rows, int maxRows, TIn input,
        Func<IReadOnlyList<TIn>, (TOut? Value, Exception? Error)[]> runGroup, object? member = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(runGroup);
        var item = new JoinableItem<TIn, TOut>(key, rows, maxRows, input, runGroup, member);
        Enqueue(item, priority, cancellationToken);
        return item.Task;
    }

    /// <summary>Runs of joinable work so far, and the items they carried: a batching gauge for metrics and tests.</summary>
    public (long Runs, long Items) Joined => (Interlocked.Read(ref _joinedRuns), Interlocked.Read(ref _joinedItems));

    long _joinedRuns, _joinedItems;

    /// <summary>Counts a joint run as it starts, before any of its callers sees a result.</summary>
    readonly Action<int> _countRun;

    void Enqueue(WorkItem item, int priority, CancellationToken cancellationToken)
    {
        if (cancellationToken.IsCancellationRequested)
        {
            item.TryCancel(cancellationToken);
            return;
        }
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
    }

    /// <summary>
    /// Adds to <paramref name="partners"/> the queued items that may join <paramref name="first"/>'s run, oldest first,
    /// within its row limit (under the lock).
    /// </summary>
    void TakePartners(WorkItem first, int priority, ref List<WorkItem>? partners)
    {
        if (first.Key is not { } key || _queue.Count == 0) return;
        int rows = first.Rows + (partners?.Sum(p => p.Rows) ?? 0);
        List<WorkItem>? taken = null;
        foreach (var (item, order) in _queue.UnorderedItems.OrderBy(e => e.Priority.Sequence))
        {
            if (order.Priority != priority || item.GetType() != first.GetType() || !key.Equals(item.Key) || !item.IsPending) continue;
            if (rows + item.Rows > first.MaxRows) continue;
            rows += item.Rows;
            (taken ??= []).Add(item);
        }
        if (taken is null) return;
        foreach (var t in taken) _queue.Remove(t, out _, out _, ReferenceEqualityComparer.Instance);
        (partners ??= []).AddRange(taken);
    }

    readonly JoinHistory _history = new();

    /// <summary>Longest wait for the rest of a run's usual steps.</summary>
    public static TimeSpan MaxGather { get; set; } = TimeSpan.FromMilliseconds(5);

    void Gather(WorkItem first, int priority, ref List<WorkItem>? partners)
    {
        if (first.Key is not { } key) return;
        var (expected, ticks) = _history.Expected(key);
        if (expected <= 1) return;
        // Up to a quarter of the last run: waiting can cost at most that fraction of a step's latency.
        long wait = Math.Min(MaxGather.Ticks, TimeSpan.FromSeconds((double)ticks / System.Diagnostics.Stopwatch.Frequency).Ticks / 4);
        var deadline = DateTime.UtcNow.AddTicks(wait);
        while (1 + (partners?.Count ?? 0) < expected && !_stopping)
        {
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero) break;
            Monitor.Wait(_queue, left);
            TakePartners(first, priority, ref partners);
        }
    }

    void Loop()
    {
        while (true)
        {
            WorkItem? item = null;
            List<WorkItem>? partners = null;
            lock (_queue)
            {
                while (_queue.Count == 0 && !_stopping)
                {
                    if (!_untrimmed) Monitor.Wait(_queue);
                    else if (!Monitor.Wait(_queue, TrimAfterIdleMs) && _queue.Count == 0)
                    {
                        _untrimmed = false;   // under the lock: a TrimWhenIdle during the trim asks for another
                        break;
                    }
                }
                if (_queue.TryDequeue(out item, out var order))
                {
                    TakePartners(item, order.Priority, ref partners);
                    Gather(item, order.Priority, ref partners);
                }
                else if (_stopping) return;
            }
            if (item is null)
            {
                // Outside the lock: a trim walks the whole heap, and callers queueing work must not wait for it.
                _onIdle?.Invoke();
                Trim();
                Interlocked.Increment(ref _idleTrims);
                continue;
            }
            if (item.Key is null)
            {
                item.Run();
                _heavySinceTrim = true;
            }
            else
            {
                long started = System.Diagnostics.Stopwatch.GetTimestamp();
                var ran = item.RunJoined(partners, _countRun);
                if (ran.Count > 0)
                    _history.Ran(item.Key, ran.Select(r => r.Member), System.Diagnostics.Stopwatch.GetTimestamp() - started);
            }
            _untrimmed = true;
            if (_heavySinceTrim && System.Diagnostics.Stopwatch.GetElapsedTime(_lastTrim).TotalMilliseconds >= TrimWhileBusyEveryMs)
            {
                Trim();
                Interlocked.Increment(ref _busyTrims);
            }
        }
    }

    void Trim()
    {
        NativeHeap.Trim();
        _heavySinceTrim = false;
        _lastTrim = System.Diagnostics.Stopwatch.GetTimestamp();
    }

    /// <summary>
    /// Asks for the idle trim again although nothing ran since the last one: memory was freed outside the queue (a
    /// session closed and left its KV pages in the pool).
    /// </summary>
    public void TrimWhenIdle()
    {
        lock (_queue)
        {
            _untrimmed = true;
            Monitor.PulseAll(_queue);
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

        /// <summary>Non-null for work that may share a run with equal-keyed work (<see cref="JoinableItem{TIn, TOut}"/>).</summary>
        public virtual object? Key => null;
        public virtual int Rows => 0;
        public virtual int MaxRows => 0;
        public bool IsPending => Volatile.Read(ref _state) == Pending;

        public void Run()
        {
            if (TryStart()) Execute();
        }

        /// <summary>Pending → running; false when it was cancelled first.</summary>
        public bool TryStart()
        {
            if (Interlocked.CompareExchange(ref _state, Running, Pending) != Pending) return false;
            Registration.Dispose();
            return true;
        }

        /// <summary>
        /// Runs this item with <paramref name="partners"/> (same key and type), calling <paramref name="onStart"/> with
        /// the count before any result is out; returns the items that ran (cancelled ones drop out).
        /// </summary>
        public virtual List<WorkItem> RunJoined(List<WorkItem>? partners, Action<int> onStart) => throw new InvalidOperationException("not joinable work");

        /// <summary>Who queued joinable work (a session), so the scheduler knows how many usually run together; may be null.</summary>
        public virtual object? Member => null;

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

    sealed class JoinableItem<TIn, TOut>(object key, int rows, int maxRows, TIn input,
        Func<IReadOnlyList<TIn>, (TOut? Value, Exception? Error)[]> runGroup, object? member) : WorkItem
    {
        readonly TaskCompletionSource<TOut> _tcs = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public Task<TOut> Task => _tcs.Task;
        public override object? Key => key;
        public override int Rows => rows;
        public override int MaxRows => maxRows;

        public override object? Member => member;

        public override List<WorkItem> RunJoined(List<WorkItem>? partners, Action<int> onStart)
        {
            var group = new List<JoinableItem<TIn, TOut>>(1 + (partners?.Count ?? 0));
            if (TryStart()) group.Add(this);
            foreach (var p in partners ?? [])
                if (p.TryStart()) group.Add((JoinableItem<TIn, TOut>)p);
            if (group.Count > 0) onStart(group.Count);
            RunGroup(group);
            return [.. group];
        }

        /// <summary>Runs started items as one group and completes each one's task.</summary>
        void RunGroup(List<JoinableItem<TIn, TOut>> group)
        {
            if (group.Count == 0) return;
            (TOut? Value, Exception? Error)[] outcomes;
            try { outcomes = runGroup(group.Select(g => g.Input).ToArray()); }
            catch (Exception e)
            {
                foreach (var g in group) g._tcs.TrySetException(e);
                return;
            }
            for (int i = 0; i < group.Count; i++)
            {
                if (outcomes[i].Error is { } error) group[i]._tcs.TrySetException(error);
                else group[i]._tcs.TrySetResult(outcomes[i].Value!);
            }
        }

        TIn Input => input;

        protected override void Execute() => RunGroup([this]);
        protected override void SetCanceled(CancellationToken token) => _tcs.TrySetCanceled(token);
    }
}
