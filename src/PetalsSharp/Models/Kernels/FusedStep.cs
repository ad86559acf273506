using System.Runtime.InteropServices;
using PetalsSharp.Models.Lora;

namespace PetalsSharp.Models.Kernels;

/// <summary>
/// One family's fused decode plan for one block: the block's weights viewed in place, and the phases that run it on a
/// <see cref="WorkerTeam"/>. A plan is immutable and shared by every session; what a step needs (positions, cache,
/// scratch, adapter factors) lives in the session's <see cref="FusedStep"/>.
/// </summary>
public interface IFusedBlock
{
    /// <summary>Module paths (<c>self_attn.q_proj</c>) an adapter may change, in the order <see cref="FusedStep.LowRanks"/> indexes them.</summary>
    IReadOnlyList<string> Modules { get; }

    /// <summary>
    /// Before the block's phases: sizes scratch and fills per-step tables. Runs on one thread while the others wait: the
    /// caller before the team starts, or (<see cref="FusedStep.RunBlocks"/>) whichever worker arrives last at the barrier
    /// that ends the previous block. It must not start team jobs.
    /// </summary>
    void Prepare(FusedStep step);

    /// <summary>The block on every worker; phases meet at <see cref="WorkerTeam.Barrier"/>. Updates <see cref="FusedStep.Hidden"/> in place.</summary>
    void Execute(FusedStep step, int worker, int workers);

    /// <summary>
    /// Whether some linear runs on rows gathered out of order (Mixtral's experts): then one pass cannot apply each
    /// session's own adapter, and sessions with different adapters run in different passes.
    /// </summary>
    bool GathersRows => false;
}

/// <summary>
/// The MLP half of a block on the fused path (<see cref="FusedSwiGlu"/>, <see cref="FusedMoe"/>), from normed rows to
/// the residual, so one plan serves every family that differs only there.
/// </summary>
public unsafe interface IFusedMlp
{
    /// <summary>Sizes the MLP's scratch, as <see cref="IFusedBlock.Prepare"/> does.</summary>
    void Prepare(FusedStep step);

    /// <summary><c>Hidden += mlp(normed)</c> on every worker; <paramref name="normed"/> is <c>[R, H]</c>.</summary>
    void Execute(FusedStep step, float* normed, int worker, int workers);
}

/// <summary>Scratch buffers a plan asks <see cref="FusedStep.Ensure"/> for, by slot.</summary>
public static class Slot
{
    public const int Normed = 0, Q = 1, K = 2, V = 3, Attn = 4, Out = 5, Gate = 6, Up = 7, Scores = 8, LowRank = 9, Cos = 10, Sin = 11;

    /// <summary>Slots left for families with more buffers (Mixtral's router, Falcon's second norm).</summary>
    public const int FirstFree = 12, Count = 24;
}

/// <summary>
/// A session's fused-decode state: the step's geometry, the hidden rows being updated in place, the block's cache,
/// scratch buffers allocated once per session (and grown only when a step needs more), and the adapter's low-rank
/// factors. It is also the team job, so a step allocates nothing.
/// </summary>
public sealed unsafe partial class FusedStep : ITeamJob, IDisposable
{
    readonly float*[] _buffers = new float*[Slot.Count];
    readonly long[] _capacity = new long[Slot.Count];
    readonly Dictionary<(LoraAdapter, int), LowRank[]> _lowRanks = new();
    readonly LoraAdapter? _adapter;
    IFusedBlock? _plan;

    /// <param name="team">Runs every block's phases.</param>
    /// <param name="adapter">The session's adapter, or null; its factors must be float32 (<see cref="FusedDecode.Supports"/>).</param>
    public FusedStep(WorkerTeam team, LoraAdapter? adapter)
    {
        Team = team;
        _adapter = adapter;
        _advance = Advance;
        _phaseOf = new int[team.Size * Pad];
    }

    public WorkerTeam Team { get; }

    /// <summary>Batch rows B, new tokens T, rows R = B·T of <see cref="Hidden"/>, tokens already cached.</summary>
    public int Batch { get; private set; }
    public int Tokens { get; private set; }
    public int Rows => Batch * Tokens;
    public int Past { get; private set; }
    public int Total => Past + Tokens;

    /// <summary>Counts <see cref="Begin"/> calls: per-step tables (rotary) are filled once per step, not once per block.</summary>
    public int StepNumber { get; private set; }

    /// <summary>What <see cref="Slot.Cos"/>/<see cref="Slot.Sin"/> hold: the step and the inverse frequencies they were made for.</summary>
    internal (int Step, float[]? Inverse) RotaryTables { get; set; } = (-1, null);

    /// <summary>Per-row left padding (null = none): keys before it are hidden, positions count from it.</summary>
    public int[]? LeftPadding { get; private set; }

    /// <summary><c>[R, H]</c> float32: the hidden rows every block updates in place.</summary>
    public float* Hidden { get; private set; }

    /// <summary>
    /// The running block's cache (the first session's, in a joint step: every session's cache has its heads and head
    /// size; rows read theirs through <see cref="PagesOf"/>) and absolute index.
    /// </summary>
    public KvPages Cache => _pages[0];
    public int Block { get; private set; }

    /// <summary>The running block's adapter factors, one per <see cref="IFusedBlock.Modules"/> entry (unset = none).</summary>
    public LowRank[] LowRanks { get; private set; } = [];

    /// <summary>Starts a step of one session over <paramref name="hidden"/> <c>[B·T, H]</c>.</summary>
    public void Begin(StepContext ctx, float* hidden)
    {
        (Batch, Tokens, Past, LeftPadding) = (ctx.Batch, ctx.NewTokens, ctx.PastLength, ctx.LeftPadding);
        Hidden = hidden;
        StepNumber++;
        SingleRows();
        SizeLowRankScratch(_adapter?.Config.R ?? 0);
    }

    /// <summary>Runs one block: prepares on this thread, then one <see cref="WorkerTeam.Run"/>.</summary>
    public void RunBlock(IFusedBlock plan, DecoderBlock block, LayerCache cache)
    {
        CheckRoom(cache, Past + Tokens);
        ResetClaims(1);
        _pages[0] = cache.Pages();
        Select(plan, block);
        Team.Run(this);
    }

    /// <summary>
    /// Runs every block in one <see cref="WorkerTeam.Run"/>: the team wakes once per step, not once per block, and
    /// the switch to the next block (its cache, adapter factors and <see cref="IFusedBlock.Prepare"/>) happens inside
    /// the barrier that ends the previous one. Same result as <see cref="RunBlock"/> block after block.
    /// </summary>
    public void RunBlocks(IReadOnlyList<IFusedBlock> plans, IReadOnlyList<DecoderBlock> blocks, IReadOnlyList<LayerCache>? caches)
    {
        if (caches is null != _segmentCount > 0)
            throw new InvalidOperationException(caches is null ? "a one-session step needs its caches" : "a joint step's caches are its segments'");
        if (plans.Count == 0) return;
        if (caches is not null)
            for (int i = 0; i < caches.Count; i++) CheckRoom(caches[i], Past + Tokens);   // no enumerator: steps allocate nothing
        (_plans, _blocks, _caches, _next) = (plans, blocks, caches, 0);
        ResetClaims(plans.Count);
        try
        {
            _advance();
            Team.Run(this);
        }
        finally
        {
            (_plans, _blocks, _caches) = (null, null, null);
        }
    }

    /// <summary>Whether a session runs a step through <see cref="RunBlocks"/> (else one run per block); a benchmark switch.</summary>
    public static bool OneRunPerStep { get; set; } = true;

    IReadOnlyList<IFusedBlock>? _plans;
    IReadOnlyList<DecoderBlock>? _blocks;
    IReadOnlyList<LayerCache>? _caches;
    int _next;

    /// <summary>Makes block <see cref="_next"/> of <see cref="RunBlocks"/> the current one (cached delegate: no allocation per step).</summary>
    readonly Action _advance;

    void Advance()
    {
        int i = _next++;
        if (_caches is { } caches) _pages[0] = caches[i].Pages();
        else SelectSegmentPages(i);
        Select(_plans![i], _blocks![i]);
    }

    void Select(IFusedBlock plan, DecoderBlock block)
    {
        _plan = plan;
        Block = block.Index;
        LowRanks = _adapter is null ? [] : LowRanksOf(plan, _adapter);
        if (_mixedAdapters)
            for (int i = 0; i < _segmentCount; i++)
                _segmentLowRanks[i] = _segments[i].Adapter is { } a ? LowRanksOf(plan, a) : [];
        plan.Prepare(this);
    }

    void ITeamJob.Execute(int worker, int workers)
    {
        if (_plans is not { } plans)
        {
            _plan!.Execute(this, worker, workers);
            return;
        }
        for (int i = 0; i < plans.Count; i++)
        {
            if (i > 0) Team.BarrierThen(_advance);   // the last block's residual slices are all written before the next norm reads rows
            _plan!.Execute(this, worker, workers);
        }
    }

    // Dynamic work claiming. Each worker owns its static slice of a phase's work (a linear's output columns), cut into
    // chunks it takes from its own counter, front to back, so it streams one contiguous range as before. A worker
    // that finishes early takes the next chunks of the others' slices from their counters, so one that lost its core
    // for a moment (gRPC, another process, the OS) holds up the barrier by a chunk, not by its whole slice. Workers
    // meet the same phases in the same order, so each counts its own; counters sit on their own cache lines.
    const int Pad = 16;                       // ints per 64-byte line
    const int ClaimPhasesPerBlock = 16;       // claimed phases one block may use (Llama uses 5)
    readonly int[] _phaseOf;                  // [workers · Pad]: phases each worker has begun this run
    int[] _claimed = [];                      // [phases · workers · Pad]: chunks taken from each worker's slice

    void ResetClaims(int blocks)
    {
        int needed = blocks * ClaimPhasesPerBlock * Team.Size * Pad;
        if (_claimed.Length < needed) _claimed = new int[needed];
        else Array.Clear(_claimed, 0, needed);
        Array.Clear(_phaseOf);
    }

    /// <summary>
    /// Begins this worker's next claimed phase over [0, <paramref name="count"/>): its static slice first, in chunks of
    /// about a quarter of it, multiples of <paramref name="align"/> (so 4-row tiles split exactly as in a static slice),
    /// then what the others have not taken yet. Every worker must begin the same claimed phases in the same order.
    /// </summary>
    public Chunks Claim(int worker, int count, int align = 8)
    {
        int workers = Team.Size;
        int phase = _phaseOf[worker * Pad]++;
        int per = MatRows.Slice(count, 0, workers, align).End;
        int size = Math.Max(align, ((per + 3) / 4 + align - 1) / align * align);
        // Off, or more phases than planned: each worker takes its static slice alone.
        bool dynamic = DynamicClaims && (phase + 1) * workers * Pad <= _claimed.Length;
        return new Chunks(dynamic ? _claimed : null, phase * workers * Pad, worker, workers, count, per, size);
    }

    /// <summary>Whether phases hand out chunks dynamically (else each worker takes a static slice); a benchmark switch.</summary>
    public static bool DynamicClaims { get; set; } = true;

    /// <summary>A phase's chunks as one worker takes them: <c>while (chunks.Next(out s, out e)) ...</c>.</summary>
    public struct Chunks
    {
        readonly int[]? _counters;
        readonly int _base, _worker, _workers, _count, _per, _size;
        int _victim;   // the slice being drained: this worker's, then the others' in turn
        bool _staticTaken;

        internal Chunks(int[]? counters, int @base, int worker, int workers, int count, int per, int size)
        {
            (_counters, _base, _worker, _workers, _count, _per, _size) = (counters, @base, worker, workers, count, per, size);
            (_victim, _staticTaken) = (0, false);
        }

        public bool Next(out int start, out int end)
        {
            if (_counters is null)
            {
                start = Math.Min(_count, _worker * _per);
                end = Math.Min(_count, start + _per);
                bool first = !_staticTaken;
                _staticTaken = true;
                return first && start < end;
            }
            for (; _victim < _workers; _victim++)
            {
                int owner = (_worker + _victim) % _workers;
                int sliceStart = Math.Min(_count, owner * _per), sliceEnd = Math.Min(_count, sliceStart + _per);
                start = sliceStart + (Interlocked.Increment(ref _counters[_base + owner * Pad]) - 1) * _size;
                if (start < sliceEnd)
                {
                    end = Math.Min(sliceEnd, start + _size);
                    return true;
                }
            }
            start = end = _count;
            return false;
        }
    }

    /// <summary>Scratch buffer <paramref name="slot"/>, at least <paramref name="floats"/> long (grown on demand, zeroed when new).</summary>
    public float* Ensure(int slot, long floats)
    {
        if (_capacity[slot] < floats)
        {
            NativeMemory.AlignedFree(_buffers[slot]);
            _buffers[slot] = null;
            _capacity[slot] = 0;
            _buffers[slot] = (float*)NativeMemory.AlignedAlloc((nuint)(floats * sizeof(float)), 64);
            NativeMemory.Clear(_buffers[slot], (nuint)(floats * sizeof(float)));
            _capacity[slot] = floats;
        }
        return _buffers[slot];
    }

    /// <summary>Scratch buffer <paramref name="slot"/> as <see cref="Ensure"/> last sized it.</summary>
    public float* Buffer(int slot) => _buffers[slot];

    /// <summary>Worker <paramref name="worker"/>'s share of the low-rank scratch: <c>[R, rank]</c>.</summary>
    public float* LowRankScratch(int worker) => _buffers[Slot.LowRank] + (long)worker * MatRows.MaxRows * _lowRankWidth;

    LowRank[] LowRanksOf(IFusedBlock plan, LoraAdapter adapter)
    {
        if (_lowRanks.TryGetValue((adapter, Block), out var found)) return found;
        var modules = plan.Modules;
        var lowRanks = new LowRank[modules.Count];
        for (int i = 0; i < modules.Count; i++)
            if (adapter.TryGetFactors(Block, modules[i], out var a, out var b)) lowRanks[i] = LowRank.From(a, b);
        if (_lowRanks.Count >= 4096) _lowRanks.Clear();   // a server's joint step meets many adapters over time
        _lowRanks[(adapter, Block)] = lowRanks;
        return lowRanks;
    }

    public void Dispose()
    {
        for (int i = 0; i < _buffers.Length; i++)
        {
            NativeMemory.AlignedFree(_buffers[i]);
            _buffers[i] = null;
            _capacity[i] = 0;
        }
    }
}
