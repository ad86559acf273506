using PetalsSharp.Models.Lora;

namespace PetalsSharp.Models.Kernels;

/// <summary>
/// Where each batch row of a step keeps its cache. A one-session step has one segment; a joint step (continuous
/// batching) stacks the rows of several sessions, each at its own position, with its own caches and padding, so one
/// pass over the weights serves them all while attention stays per session.
/// </summary>
public sealed unsafe partial class FusedStep
{
    /// <summary>
    /// One session's rows in a joint step: batch rows, tokens already cached, left padding, one cache per block, and its
    /// server-side adapter (null: base weights).
    /// </summary>
    public readonly record struct Segment(int Batch, int Past, int[]? LeftPadding, IReadOnlyList<LayerCache> Caches,
        LoraAdapter? Adapter = null);

    KvPages[] _pages = new KvPages[1];        // the running block's cache of each segment
    LowRank[][] _segmentLowRanks = [];        // the running block's adapter factors of each segment, when they differ
    int[] _segmentRowStart = [];              // first row of each segment in Hidden
    bool _mixedAdapters;                      // segments carry adapters other than this step's own
    int _lowRankWidth;                        // rank the low-rank scratch is sized for
    Segment[] _segments = [];
    int _segmentCount;                        // 0: a one-session step (caches come with RunBlocks)
    readonly int[] _rowSegment = new int[MatRows.MaxRows], _rowLocal = new int[MatRows.MaxRows];
    readonly int[] _rowPast = new int[MatRows.MaxRows], _rowPad = new int[MatRows.MaxRows], _rowLength = new int[MatRows.MaxRows];

    /// <summary>Tokens cached before this step for batch row <paramref name="b"/>.</summary>
    public int PastOf(int b) => _rowPast[b];

    /// <summary>Left padding of batch row <paramref name="b"/>.</summary>
    public int PadOf(int b) => _rowPad[b];

    /// <summary>Batch row <paramref name="b"/>'s row inside its own session's cache.</summary>
    public int LocalRow(int b) => _rowLocal[b];

    /// <summary>The running block's cache for batch row <paramref name="b"/>.</summary>
    public ref readonly KvPages PagesOf(int b) => ref _pages[_rowSegment[b]];

    /// <summary>The longest cache any row reads: score buffers hold one such row.</summary>
    public int MaxLength => _segmentCount > 0 ? _jointMaxLength : _pages[0].MaxLength;

    int _jointMaxLength;

    /// <summary>
    /// The length dynamic NTK rotary sees for batch row <paramref name="b"/>: its session's whole step (cached plus
    /// new tokens) minus that session's least padding, as the one-session reference computes it.
    /// </summary>
    public int DynamicLength(int b) => _rowLength[b];

    /// <summary>Whether this step stacks several sessions.</summary>
    public bool IsJoint => _segmentCount > 0;

    /// <summary>
    /// Starts a joint step over <paramref name="hidden"/> <c>[ΣB·T, H]</c>, the sessions' rows one after another, each
    /// with <paramref name="tokens"/> new tokens. Run it with <see cref="RunBlocks"/> and no caches.
    /// </summary>
    public void BeginJoint(ReadOnlySpan<Segment> segments, int tokens, float* hidden)
    {
        int batch = 0;
        foreach (var s in segments) batch += s.Batch;
        if (segments.Length == 0 || tokens < 1 || batch * tokens > MatRows.MaxRows)
            throw new ArgumentException($"a joint step takes 1 to {MatRows.MaxRows} rows; got {batch} × {tokens}");
        if (_segments.Length < segments.Length)
        {
            _segments = new Segment[segments.Length];
            _pages = new KvPages[segments.Length];
            _segmentLowRanks = new LowRank[segments.Length][];
            _segmentRowStart = new int[segments.Length];
        }
        segments.CopyTo(_segments);
        _segmentCount = segments.Length;
        (Batch, Tokens, Past, LeftPadding) = (batch, tokens, segments[0].Past, null);
        Hidden = hidden;
        StepNumber++;
        int row = 0, longest = 0, rank = _adapter?.Config.R ?? 0;
        _mixedAdapters = false;
        for (int si = 0; si < segments.Length; si++)
        {
            var s = segments[si];
            if (s.Adapter is { } a && !ReferenceEquals(a, _adapter))
            {
                if (_adapter is not null)
                    throw new ArgumentException("a joint step made for one adapter cannot take a session with another");
                _mixedAdapters = true;
                rank = Math.Max(rank, a.Config.R);
            }
            _segmentRowStart[si] = row * tokens;
            int leastPad = s.LeftPadding is { Length: > 0 } p ? p.Min() : 0;
            for (int b = 0; b < s.Batch; b++, row++)
                (_rowSegment[row], _rowLocal[row], _rowPast[row], _rowPad[row], _rowLength[row]) =
                    (si, b, s.Past, s.LeftPadding?[b] ?? 0, s.Past + tokens - leastPad);
            longest = Math.Max(longest, s.Caches[0].MaxLength);
            for (int i = 0; i < s.Caches.Count; i++) CheckRoom(s.Caches[i], s.Past + tokens);
        }
        _jointMaxLength = longest;
        SizeLowRankScratch(rank);
    }

    void SizeLowRankScratch(int rank)
    {
        _lowRankWidth = rank;
        if (rank > 0) Ensure(Slot.LowRank, (long)Team.Size * MatRows.MaxRows * rank);
    }

    /// <summary>
    /// Adds module <paramref name="module"/>'s adapter update to output columns [<paramref name="o0"/>, <paramref name="o1"/>)
    /// of <paramref name="y"/> <c>[rows, ldy]</c> for <paramref name="x"/> <c>[rows, ldx]</c>: the step's adapter, or each
    /// segment's own on its rows when a joint step mixes adapters (then the rows must be the step's, in order).
    /// </summary>
    public void AddLowRank(int module, float* x, int ldx, int rows, float* y, int ldy, int o0, int o1, int worker)
    {
        if (!_mixedAdapters)
        {
            if (LowRanks.Length > 0) LowRanks[module].AddTo(x, rows, LowRankScratch(worker), y, ldy, o0, o1);
            return;
        }
        if (rows != Rows)
            throw new InvalidOperationException("rows gathered across sessions cannot take per-session adapters");
        for (int s = 0; s < _segmentCount; s++)
        {
            var lowRanks = _segmentLowRanks[s];
            if (lowRanks.Length == 0) continue;
            long r0 = _segmentRowStart[s];
            lowRanks[module].AddTo(x + r0 * ldx, _segments[s].Batch * Tokens, LowRankScratch(worker), y + r0 * ldy, ldy, o0, o1);
        }
    }

    /// <summary>Row tables of a one-session step (every row in segment 0, its cache set per block).</summary>
    void SingleRows()
    {
        _segmentCount = 0;
        _mixedAdapters = false;
        int leastPad = LeftPadding?.Min() ?? 0;
        for (int b = 0; b < Batch; b++)
            (_rowSegment[b], _rowLocal[b], _rowPast[b], _rowPad[b], _rowLength[b]) =
                (0, b, Past, LeftPadding?[b] ?? 0, Past + Tokens - leastPad);
    }

    /// <summary>
    /// A missing page is a null pointer to the kernels: every cache must have taken its pages
    /// (<see cref="LayerCache.EnsureLength"/>) before the step, so a full pool refuses the step before it changes anything.
    /// </summary>
    static void CheckRoom(LayerCache cache, int end)
    {
        if (cache.Room < end)
            throw new InvalidOperationException($"the cache has pages for {cache.Room} tokens; the step writes up to {end}");
    }

    /// <summary>Every segment's cache of block <paramref name="i"/> of the step's blocks.</summary>
    void SelectSegmentPages(int i)
    {
        for (int s = 0; s < _segmentCount; s++) _pages[s] = _segments[s].Caches[i].Pages();
    }
}
