using Grpc.Core;
using PetalsSharp.Models;
using static TorchSharp.torch;

namespace PetalsSharp.Server;

/// <summary>
/// The blocks a <see cref="BlockServer"/> holds right now: the loaded stack, its KV-cache budget and fingerprints.
/// A server that moves loads a new span, swaps it in, and retires the old one: calls that entered the old span
/// keep it alive until they leave (their <see cref="Retiring"/> token ends open sessions), then it is freed.
/// </summary>
internal sealed class ServedSpan
{
    readonly object _lock = new();
    readonly CancellationTokenSource _retiring = new();
    readonly TaskCompletionSource _drained = new(TaskCreationOptions.RunContinuationsAsynchronously);
    int _users;
    bool _retired;

    ServedSpan(LocalBlockStack stack, IReadOnlyList<string> fingerprints, long cacheTokens, double maxCacheShare, double overcommit)
    {
        Stack = stack;
        BlockFingerprints = fingerprints;
        WeightsFingerprint = Checkpoint.SpanFingerprint(fingerprints);
        WeightBytes = stack.Blocks.Sum(b => b.parameters().Sum(p => p.NumberOfElements * p.ElementSize));
        CacheBudget = new CacheBudget(cacheTokens, Length, maxCacheShare, overcommit);
    }

    /// <summary>Reads blocks [start, end) from the checkpoint (reporting each loaded block to <paramref name="progress"/>).</summary>
    public static ServedSpan Load(Checkpoint checkpoint, ServerOptions options, int start, int end, IProgress<int>? progress = null)
    {
        int layers = checkpoint.Config.NumLayers;
        if (start < 0 || end > layers || start >= end)
            throw new ArgumentException($"blocks {start}:{end} are outside the model, which has {layers} blocks (0:{layers})");
        var fingerprints = Enumerable.Range(start, end - start).Select(checkpoint.BlockFingerprint).ToArray();
        var stack = checkpoint.LoadBlocks(start, end, options.WeightDtype, progress: progress, quant: options.Quant);
        NativeHeap.Trim();   // what loading freed (file chunks being quantized, conversions) is not kept resident
        try
        {
            stack.CacheDType = options.ResolvedKvDtype;
            return new ServedSpan(stack, fingerprints, options.ResolveCacheTokens(stack.CacheBytesPerToken()), options.MaxCacheShare,
                options.CacheOvercommit);
        }
        catch
        {
            stack.Dispose();
            throw;
        }
    }

    public int Start => Stack.Start;
    public int End => Stack.End;
    public int Length => End - Start;
    public LocalBlockStack Stack { get; }
    public CacheBudget CacheBudget { get; }
    public IReadOnlyList<string> BlockFingerprints { get; }
    public string WeightsFingerprint { get; }
    public long WeightBytes { get; }

    /// <summary>Cancelled when the server moves away from these blocks: open sessions on them end.</summary>
    public CancellationToken Retiring => _retiring.Token;

    /// <summary>Marks one more call using the span; false once it is retired (the caller takes the new one).</summary>
    public bool TryEnter()
    {
        lock (_lock)
        {
            if (_retired) return false;
            _users++;
            return true;
        }
    }

    public void Exit()
    {
        lock (_lock)
        {
            if (--_users == 0 && _retired) _drained.TrySetResult();
        }
    }

    /// <summary>
    /// Ends the sessions on this span and frees its tensors once every call has left (or after
    /// <paramref name="grace"/>: a call still holding it then is stuck, and leaking its blocks beats freeing
    /// tensors under running compute).
    /// </summary>
    public async Task RetireAsync(TimeSpan grace)
    {
        lock (_lock)
        {
            if (_retired) return;
            _retired = true;
            if (_users == 0) _drained.TrySetResult();
        }
        _retiring.Cancel();
        if (await Task.WhenAny(_drained.Task, Task.Delay(grace)) != _drained.Task) return;
        Stack.Dispose();
        _retiring.Dispose();
    }

    /// <summary>The error an open session on a retired span ends with: clients fail over to another server.</summary>
    public RpcException MovedError(BlockServer server) => RequestValidator.Error(StatusCode.Unavailable,
        $"this server no longer serves blocks {Start}:{End} (it moved to {server.Start}:{server.End}); reconnect elsewhere");
}
