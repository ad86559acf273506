using static TorchSharp.torch;

namespace PetalsSharp.Models;

/// <summary>Blocks held in this process: the whole model for a local run, or a server's span.</summary>
public sealed class LocalBlockStack : IBlockStack
{
    readonly DecoderBlock[] _blocks;
    readonly bool _ownsBlocks;

    public LocalBlockStack(ModelConfig config, IReadOnlyList<DecoderBlock> blocks) : this(config, blocks, ownsBlocks: true)
    {
    }

    LocalBlockStack(ModelConfig config, IReadOnlyList<DecoderBlock> blocks, bool ownsBlocks)
    {
        _ownsBlocks = ownsBlocks;
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
        return new LocalBlockStack(Config, _blocks[(start - Start)..(end - Start)], ownsBlocks: false);
    }

    /// <summary>Bytes of KV cache one token of one row needs across the stack.</summary>
    public long CacheBytesPerToken(ScalarType dtype) =>
        _blocks.Sum(b => 2L * b.CacheShape.KvHeads * b.CacheShape.HeadDim) * ElementSize(dtype);

    static long ElementSize(ScalarType t) => t switch
    {
        ScalarType.Float32 => 4,
        ScalarType.BFloat16 or ScalarType.Float16 => 2,
        ScalarType.Float64 => 8,
        _ => throw new ArgumentException($"unsupported cache dtype {t}"),
    };

    public void Dispose()
    {
        if (_ownsBlocks) foreach (var b in _blocks) b.Dispose();
    }
}

/// <summary>A session over local blocks: one preallocated KV cache per block.</summary>
public sealed class LocalBlockSession : IBlockSession
{
    readonly LocalBlockStack _stack;
    readonly LayerCache[] _caches;

    public LocalBlockSession(LocalBlockStack stack, SessionOptions options)
    {
        StepChecks.Session(options);
        _stack = stack;
        Options = options;
        var dtype = ScalarType.Float32;
        var device = stack.Blocks[0].parameters().FirstOrDefault()?.device ?? CPU;
        _caches = stack.Blocks.Select(b => b.AllocateCache(options.Batch, options.MaxLength, device, dtype)).ToArray();
    }

    public int Position { get; private set; }
    public SessionOptions Options { get; }

    /// <summary>Caches of each block, for parity tests against HF's past_key_values.</summary>
    public IReadOnlyList<LayerCache> Caches => _caches;

    public ValueTask<Tensor> StepAsync(Tensor hidden, StepOptions? options = null, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        return ValueTask.FromResult(Step(hidden, options));
    }

    public Tensor Step(Tensor hidden, StepOptions? options = null)
    {
        var start = StepChecks.Step(hidden, options, Options, Position, _stack.Config);
        var t = (int)hidden.shape[1];
        if (options?.HypoIds is { } hypo)
        {
            if (hypo.dim() != 1 || hypo.shape[0] != Options.Batch)
                throw new ArgumentException($"hypo_ids must be [{Options.Batch}], got [{string.Join(", ", hypo.shape)}]");
            foreach (var c in _caches) c.Reorder(hypo.to(ScalarType.Int64));
        }
        if (options?.Prompts is { } prompts) BlockPrompts.Check(prompts, _stack.Blocks.Count, hidden);
        using var scope = NewDisposeScope();
        var ctx = new StepContext(Options.Batch, t, start, Options.LeftPadding, hidden.device) { Adapter = Options.Adapter };
        var output = _stack.Run(hidden, ctx, _caches, options?.OnBlockOutput, options?.Prompts);
        Position = start + t;
        return output.MoveToOuterDisposeScope();
    }

    public void Dispose()
    {
        foreach (var c in _caches) c.Dispose();
    }

    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }
}
