using static TorchSharp.torch;

namespace PetalsSharp.Models;

/// <summary>Blocks held in this process: the whole model for a local run, or a server's span.</summary>
public sealed class LocalBlockStack : IBlockStack
{
    readonly DecoderBlock[] _blocks;
    readonly bool _ownsBlocks;
    readonly Lazy<KvPagePool> _pages;

    public LocalBlockStack(ModelConfig config, IReadOnlyList<DecoderBlock> blocks) : this(config, blocks, ownsBlocks: true, pages: null)
    {
    }

    LocalBlockStack(ModelConfig config, IReadOnlyList<DecoderBlock> blocks, bool ownsBlocks, Lazy<KvPagePool>? pages)
    {
        _ownsBlocks = ownsBlocks;
        // Every block of a family has the same cache shape, so one page size serves the stack and its slices.
        _pages = pages ?? new Lazy<KvPagePool>(() =>
        {
            var (kvHeads, headDim) = _blocks![0].CacheShape;
            return new KvPagePool(kvHeads * headDim, _cacheDType);
        });
        if (blocks.Count == 0) throw new ArgumentException("a block stack needs at least one block");
        for (int i = 1; i < blocks.Count; i++)
            if (blocks[i].Index != blocks[i - 1].Index + 1) throw new ArgumentException("blocks must be contiguous");
        Config = config;
        _blocks = blocks.ToArray();
    }

    public ModelConfig Config { get; }
    public int Start => _blocks[0].Index;
    public int End => _blocks[^1].Index + 1;
    public IReadOnlyList<DecoderBlock> Blocks => _blocks;

    public Tensor Forward(Tensor hidden, ForwardOptions? options = null)
    {
        StepChecks.Hidden(hidden, Config);
        using var scope = NewDisposeScope();
        if (options?.Prompts is { } prompts) BlockPrompts.Check(prompts, _blocks.Length, hidden);
        var ctx = new StepContext((int)hidden.shape[0], (int)hidden.shape[1], 0, options?.LeftPadding, hidden.device) { Adapter = options?.Adapter };
        return Run(hidden, ctx, null, options?.OnBlockOutput, options?.Prompts).MoveToOuterDisposeScope();
    }

    public ValueTask<Tensor> ForwardAsync(Tensor hidden, ForwardOptions? options = null, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        return ValueTask.FromResult(Forward(hidden, options));
    }

    /// <summary>Runs the blocks; <paramref name="caches"/> is null for a cache-free pass.</summary>
    internal Tensor Run(Tensor hidden, StepContext ctx, LayerCache[]? caches, Action<int, Tensor>? onBlockOutput, Tensor? prompts = null)
    {
        var h = hidden;
        for (int i = 0; i < _blocks.Length; i++)
        {
            if (prompts is not null) h = BlockPrompts.Add(h, prompts[i]);      // [B, T, H]
            h = _blocks[i].Forward(h, ctx, caches?[i]);                       // [B, T, H]
            if (onBlockOutput is not null) onBlockOutput(_blocks[i].Index, h.detach().clone().DetachFromDisposeScope());
        }
        return h;
    }

    /// <summary><c>loss.backward()</c>: local blocks are ordinary autograd nodes.</summary>
    public void Backward(Tensor loss) => loss.backward();

    public IBlockSession OpenSession(SessionOptions options)
    {
        if (options.Routing is { ChoosesServers: true })
            throw new NotSupportedException("server lists and server-side adapters need a distributed model; these blocks run in this process");
        return new LocalBlockSession(this, options);
    }

    /// <summary>
    /// Blocks <c>[start, end)</c> (absolute indices) as a stack that shares these blocks; disposing the slice
    /// leaves them alive. A server uses it to run part of its span.
    /// </summary>
    public LocalBlockStack Slice(int start, int end)
    {
        if (start < Start || end > End || start >= end)
            throw new ArgumentOutOfRangeException(nameof(start), $"[{start}, {end}) is not inside [{Start}, {End})");
        return new LocalBlockStack(Config, _blocks[(start - Start)..(end - Start)], ownsBlocks: false, _pages);
    }

    /// <summary>The KV pages every session of this stack and its slices draws on.</summary>
    public KvPagePool Pages => _pages.Value;

    /// <summary>Frees the pages no session holds (a server calls it when idle); the pool allocates again on need.</summary>
    public void TrimPages()
    {
        if (_pages.IsValueCreated) _pages.Value.TrimFree();
    }

    ScalarType _cacheDType = ScalarType.Float32;

    /// <summary>
    /// How KV pages store keys and values: float32 (default, exact), bfloat16 or float16 (half the bytes; attention
    /// still computes in float32). Set it before the first session: the page pool is made once, for one dtype.
    /// </summary>
    public ScalarType CacheDType
    {
        get => _pages.IsValueCreated ? _pages.Value.DType : _cacheDType;
        set
        {
            LayerCache.ElementSize(value);   // throws on a dtype a page cannot hold
            if (!_ownsBlocks) throw new InvalidOperationException("a slice shares its stack's pages; set the KV dtype on the stack");
            if (_pages.IsValueCreated && _pages.Value.DType != value)
                throw new InvalidOperationException("the KV dtype is set before the first session opens");
            _cacheDType = value;
        }
    }

    /// <summary>Bytes of KV cache one token of one row needs across the stack, in <see cref="CacheDType"/>.</summary>
    public long CacheBytesPerToken() =>
        _blocks.Sum(b => 2L * b.CacheShape.KvHeads * b.CacheShape.HeadDim) * LayerCache.ElementSize(CacheDType);

    public void Dispose()
    {
        if (!_ownsBlocks) return;
        foreach (var b in _blocks) b.Dispose();
        if (_pages.IsValueCreated) _pages.Value.Dispose();
    }
}

/// <summary>A session over local blocks: one preallocated KV cache per block.</summary>
public sealed class LocalBlockSession : IBlockSession
{
    readonly LocalBlockStack _stack;
    readonly LayerCache[] _caches;
    Kernels.IFusedBlock[]? _plans;
    bool _plansResolved;
    Kernels.FusedStep? _fused;

    /// <summary>A session whose KV pages are charged to <paramref name="account"/> (a server's client); null for no limit.</summary>
    public LocalBlockSession(LocalBlockStack stack, SessionOptions options, IKvAccount? account = null)
    {
        StepChecks.Session(options);
        _stack = stack;
        Options = options;
        // Pages come as the session grows (Admit), so opening costs nothing but the page tables.
        _caches = stack.Blocks.Select(b => b.AllocateCache(options.Batch, options.MaxLength, stack.Pages.DType, stack.Pages, account)).ToArray();
    }

    public int Position { get; private set; }
    public SessionOptions Options { get; }

    /// <summary>Steps that ran on the fused kernels (tests check the dispatch with it).</summary>
    internal int FusedSteps { get; private set; }

    /// <summary>Whether the session made its own fused step, whose scratch it keeps until it closes.</summary>
    internal bool HasOwnScratch => _fused is not null;

    /// <summary>Caches of each block, for parity tests against HF's past_key_values.</summary>
    public IReadOnlyList<LayerCache> Caches => _caches;

    public ValueTask<Tensor> StepAsync(Tensor hidden, StepOptions? options = null, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        return ValueTask.FromResult(Step(hidden, options));
    }

    public Tensor Step(Tensor hidden, StepOptions? options = null)
    {
        var start = Admit(hidden, options);
        var t = (int)hidden.shape[1];
        if (options?.Prompts is { } prompts) BlockPrompts.Check(prompts, _stack.Blocks.Count, hidden);
        using var scope = NewDisposeScope();
        var ctx = new StepContext(Options.Batch, t, start, Options.LeftPadding, hidden.device) { Adapter = Options.Adapter };
        var output = Kernels.FusedDecode.Applies(hidden, ctx, _caches, options?.Prompts is not null) && Plans() is { } plans
            ? RunFused(plans, hidden, ctx, options?.OnBlockOutput)
            : ShortPromptChunk(hidden, t, options) is { } chunk && Plans() is { } chunkPlans
                ? RunFusedChunks(chunkPlans, hidden, start, t, chunk)
                : _stack.Run(hidden, ctx, _caches, options?.OnBlockOutput, options?.Prompts);
        Moved(start + t);
        return output.MoveToOuterDisposeScope();
    }

    /// <summary>Rows of a short prompt that run as consecutive fused steps rather than one libtorch step.</summary>
    public const int ShortPromptRows = 4 * Kernels.MatRows.MaxRows;

    /// <summary>
    /// Tokens per fused step when this step is a short prompt (more rows than one fused step takes, at most
    /// <see cref="ShortPromptRows"/>); null when it runs whole. On a 2-core AMD EPYC, 16-row fused steps of the 100M
    /// Llama ran at 900 tok/s against 460 for a 32-token prompt through libtorch (MKL takes its generic kernels there).
    /// </summary>
    internal int? ShortPromptChunk(Tensor hidden, int tokens, StepOptions? options)
    {
        int batch = Options.Batch, chunk = Kernels.MatRows.MaxRows / Math.Max(1, batch);
        if (chunk < 1 || tokens <= chunk || (long)batch * tokens > ShortPromptRows) return null;
        if (options is { Prompts: not null } or { OnBlockOutput: not null }) return null;
        return Kernels.FusedDecode.Applies(hidden, (long)batch * chunk, Options.Adapter, _caches, hasPrompts: false) ? chunk : null;
    }

    /// <summary>A short prompt as consecutive fused steps of <paramref name="chunk"/> tokens; causal attention over the cache makes them the whole step.</summary>
    Tensor RunFusedChunks(Kernels.IFusedBlock[] plans, Tensor hidden, int start, int tokens, int chunk)
    {
        var whole = empty_like(hidden);                                                   // [B, T, H]
        for (int at = 0; at < tokens; at += chunk)
        {
            int n = Math.Min(chunk, tokens - at);
            using var part = hidden.narrow(1, at, n);                                     // [B, n, H]
            var ctx = new StepContext(Options.Batch, n, start + at, Options.LeftPadding, hidden.device) { Adapter = Options.Adapter };
            using var output = RunFused(plans, part, ctx, onBlockOutput: null);           // [B, n, H]
            whole.narrow(1, at, n).copy_(output);
        }
        return whole;
    }

    /// <summary>Checks a step against the session and applies its beam reorder; returns where its tokens start.</summary>
    internal int Admit(Tensor hidden, StepOptions? options)
    {
        var start = StepChecks.Step(hidden, options, Options, Position, _stack.Config);
        if (start < Position && _caches.Length > 0 && _stack.Config.AttentionWindow is { } window && start - window + 1 < _caches[0].FirstKept)
            throw new ArgumentOutOfRangeException(nameof(options),
                $"start_from_position {start} needs keys from {Math.Max(0, start - window + 1)}, but the sliding window ({window}) kept them only from {_caches[0].FirstKept}");
        // Pages first: a full pool refuses the step here, before the reorder or any block has changed the cache.
        int end = start + (int)hidden.shape[1];
        foreach (var c in _caches) c.EnsureLength(end);
        if (options?.HypoIds is { } hypo)
        {
            if (hypo.dim() != 1 || hypo.shape[0] != Options.Batch)
                throw new ArgumentException($"hypo_ids must be [{Options.Batch}], got [{string.Join(", ", hypo.shape)}]");
            using var ids = hypo.to(ScalarType.Int64);
            foreach (var c in _caches) c.Reorder(ids);
        }
        if (start < Position)
            foreach (var c in _caches) c.Truncate(end);   // a rollback gives back the pages past what this step keeps
        return start;
    }

    /// <summary>Records a step that ran as part of a joint pass (<see cref="JointSteps"/>).</summary>
    internal void Advanced(int start, int tokens)
    {
        Moved(start + tokens);
        FusedSteps++;
    }

    /// <summary>
    /// The session's new position. A sliding window then gives back the pages no later query reads, keeping one page
    /// more for short rollbacks (speculative decoding takes back a few tokens).
    /// </summary>
    void Moved(int position)
    {
        Position = position;
        if (_stack.Config.AttentionWindow is { } window)
            foreach (var c in _caches) c.DropBefore(position - window + 1 - LayerCache.PageTokens);
    }

    internal LocalBlockStack Stack => _stack;

    internal Kernels.IFusedBlock[]? Plans()
    {
        if (!_plansResolved) (_plans, _plansResolved) = (Kernels.FusedDecode.Plans(_stack.Blocks), true);
        return _plans;
    }

    /// <summary>The step on the fused kernels: one copy of the hidden rows, updated in place block after block.</summary>
    unsafe Tensor RunFused(Kernels.IFusedBlock[] plans, Tensor hidden, StepContext ctx, Action<int, Tensor>? onBlockOutput)
    {
        FusedSteps++;
        var h = hidden.contiguous().clone();                                   // [B, T, H]
        _fused ??= new Kernels.FusedStep(Kernels.WorkerTeam.Shared, Options.Adapter as Lora.LoraAdapter);
        _fused.Begin(ctx, Weights.NativeMemory.Pointer<float>(h));
        var blocks = _stack.Blocks;
        if (onBlockOutput is null && Kernels.FusedStep.OneRunPerStep)
        {
            _fused.RunBlocks(plans, blocks, _caches);
            return h;
        }
        for (int i = 0; i < plans.Length; i++)
        {
            _fused.RunBlock(plans[i], blocks[i], _caches[i]);
            if (onBlockOutput is not null) onBlockOutput(blocks[i].Index, h.clone().DetachFromDisposeScope());
        }
        return h;
    }

    public void Dispose()
    {
        _fused?.Dispose();
        foreach (var c in _caches) c.Dispose();
    }

    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }
}
