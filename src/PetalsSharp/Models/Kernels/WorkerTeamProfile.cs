using System.Diagnostics;

namespace PetalsSharp.Models.Kernels;

/// <summary>
/// Where a team job's time goes, seen from the caller (worker 0): the time it works between barriers (phase k of a
/// job is the work before its k-th barrier) and the time it waits in each barrier and for the other workers at the
/// end. Summed over jobs, so a benchmark can run many steps and divide.
/// </summary>
public sealed class TeamProfile
{
    /// <summary>Most phases per job that get their own slot; later ones add to the last.</summary>
    public const int MaxPhases = 256;

    readonly long[] _work = new long[MaxPhases], _wait = new long[MaxPhases];
    long _last;
    int _phase;

    /// <summary>Jobs profiled.</summary>
    public int Jobs { get; private set; }

    /// <summary>Most phases seen in one job (barriers + 1).</summary>
    public int Phases { get; private set; }

    /// <summary>Seconds worker 0 worked in phase <paramref name="k"/>, summed over jobs.</summary>
    public double WorkSeconds(int k) => (double)_work[k] / Stopwatch.Frequency;

    /// <summary>Seconds worker 0 waited at the end of phase <paramref name="k"/> (a barrier, or the job's end).</summary>
    public double WaitSeconds(int k) => (double)_wait[k] / Stopwatch.Frequency;

    internal void BeginJob()
    {
        Jobs++;
        _phase = 0;
        _last = Stopwatch.GetTimestamp();
    }

    /// <summary>Closes the current phase's work (<paramref name="waited"/> false) or its wait (true, then the next phase starts).</summary>
    internal void Phase(bool waited)
    {
        long now = Stopwatch.GetTimestamp();
        int k = Math.Min(_phase, MaxPhases - 1);
        if (waited)
        {
            _wait[k] += now - _last;
            _phase++;
            Phases = Math.Max(Phases, _phase);
        }
        else _work[k] += now - _last;
        _last = now;
    }
}

public sealed partial class WorkerTeam
{
    [ThreadStatic] static TeamProfile? t_profile;   // the profile of the job this thread runs as worker 0

    /// <summary>Profiles every following job while set (benchmarks only: it reads the clock twice per barrier).</summary>
    public TeamProfile? Profile { get; set; }
}
