namespace PetalsSharp.Server;

/// <summary>
/// Who took part in the recent joint runs of each key, so the <see cref="ComputeScheduler"/> knows how many steps to
/// wait for. Steps of sessions decoding together arrive a little apart: the first to arrive would run alone and the
/// rest in a second pass, and a count taken from the last run alone would keep that split forever (4 + 4 stays 4 + 4).
/// Counting the distinct members of the last two runs sees all eight, so the next run waits for them (briefly, see
/// <see cref="ComputeScheduler.MaxGather"/>) and one pass serves them all. A member that left is counted for two more
/// runs at most. Compute thread only.
/// </summary>
internal sealed class JoinHistory
{
    sealed class Runs
    {
        public long Count;
        public long Ticks;
        public readonly Dictionary<object, long> LastRun = new(ReferenceEqualityComparer.Instance);
    }

    readonly Dictionary<object, Runs> _byKey = new();

    /// <summary>Distinct members of the key's last two runs, and how long its last run took (Stopwatch ticks).</summary>
    public (int Members, long Ticks) Expected(object key)
    {
        if (!_byKey.TryGetValue(key, out var runs)) return (0, 0);
        int members = 0;
        foreach (var last in runs.LastRun.Values)
            if (last >= runs.Count - 1) members++;
        return (members, runs.Ticks);
    }

    /// <summary>A run of <paramref name="key"/> carried <paramref name="members"/> and took <paramref name="ticks"/>.</summary>
    public void Ran(object key, IEnumerable<object?> members, long ticks)
    {
        if (!_byKey.TryGetValue(key, out var runs))
        {
            if (_byKey.Count >= 64) _byKey.Clear();   // keys are (blocks, tokens, adapter): few in steady state
            _byKey[key] = runs = new Runs();
        }
        runs.Count++;
        runs.Ticks = ticks;
        foreach (var m in members)
            if (m is not null) runs.LastRun[m] = runs.Count;
        if (runs.LastRun.Count > 256)
            foreach (var stale in runs.LastRun.Where(e => e.Value < runs.Count - 1).Select(e => e.Key).ToList())
                runs.LastRun.Remove(stale);
    }
}
