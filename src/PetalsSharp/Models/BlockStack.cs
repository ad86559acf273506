using static TorchSharp.torch;

namespace PetalsSharp.Models;

/// <summary>
/// A contiguous run of blocks <c>[Start, End)</c>: all of them in this process, or a chain of servers. The
/// client-side model talks to blocks only through this, so local and distributed runs share one code path.
/// </summary>
public interface IBlockStack : IDisposable
{
    ModelConfig Config { get; }
    int Start { get; }
    int End { get; }

    /// <summary>
    /// A cache-free forward <c>[B,T,H] → [B,T,H]</c>, differentiable with respect to <paramref name="hidden"/>.
    /// </summary>
    Tensor Forward(Tensor hidden, ForwardOptions? options = null);

    /// <summary>
    /// <see cref="Forward"/> for callers that can await: a remote stack waits for its servers without holding a
    /// thread, and stops waiting when <paramref name="cancellationToken"/> fires. A local stack computes in place.
    /// </summary>
    ValueTask<Tensor> ForwardAsync(Tensor hidden, ForwardOptions? options = null, CancellationToken cancellationToken = default);

    /// <summary>
    /// <c>loss.backward()</c> through these blocks, throwing when a part of it failed: a remote stack's servers run
    /// its backward, and libtorch cannot carry an exception out of an autograd node, so the failure is raised here.
    /// </summary>
    void Backward(Tensor loss);

    /// <summary>Opens an inference session that keeps a KV cache for every block of the stack.</summary>
    IBlockSession OpenSession(SessionOptions options);
}

/// <summary>Options of a cache-free forward.</summary>
/// <param name="LeftPadding">Per-row count of left-padding tokens.</param>
/// <param name="OnBlockOutput">
/// Receives (absolute block index, its output <c>[B,T,H]</c>) for every block whose output the stack can see.
/// The receiver owns the tensor (it is outside any dispose scope) and must dispose it.
/// </param>
/// <param name="Prompts">
/// Deep prompts <c>[blocks of the stack, B or 1, P, H]</c>: prompts[i] is added to the first P positions of block
/// i's input (see <see cref="BlockPrompts"/>). Forward is differentiable with respect to them too.
/// </param>
public sealed record ForwardOptions(IReadOnlyList<int>? LeftPadding = null, Action<int, Tensor>? OnBlockOutput = null,
    Tensor? Prompts = null)
{
    /// <summary>Server-side adapter applied to every block of the pass (local stacks only); null = base weights.</summary>
    public Lora.ILinearAdapter? Adapter { get; init; }
}

/// <summary>Options fixed when a session opens.</summary>
/// <param name="Batch">Rows in every step.</param>
/// <param name="MaxLength">Tokens the KV cache must hold (prompt plus everything generated).</param>
/// <param name="LeftPadding">Per-row count of left-padding tokens at the start of the sequence.</param>
public sealed record SessionOptions(int Batch, int MaxLength, IReadOnlyList<int>? LeftPadding = null)
{
    /// <summary>Server-side adapter applied at every step (local stacks only); null = base weights.</summary>
    public Lora.ILinearAdapter? Adapter { get; init; }

    /// <summary>
    /// This session's routing (say, one request's server lists and route callback) instead of the stack's. Server
    /// lists and adapters need a distributed stack; a local one refuses them.
    /// </summary>
    public RouteOverrides? Routing { get; init; }
}

/// <summary>
/// Routing that one view of a distributed model or one session uses instead of the client's options: server lists,
/// a server-side adapter, and a route callback. Null members keep the options' values.
/// </summary>
/// <param name="AllowedServers">Use only these servers (addresses or peer ids).</param>
/// <param name="BlockedServers">Never use these servers.</param>
/// <param name="OnRoute">Also called with the <c>route: ...</c> line (besides the options' callback) whenever a chain is chosen.</param>
/// <param name="Adapter">Server-side LoRA adapter by name; only servers that announce it are routed through.</param>
public sealed record RouteOverrides(IReadOnlySet<string>? AllowedServers = null, IReadOnlySet<string>? BlockedServers = null,
    Action<string>? OnRoute = null, string? Adapter = null)
{
    /// <summary>Whether these overrides change which servers are used (as opposed to only observing the route).</summary>
    public bool ChoosesServers => AllowedServers is not null || BlockedServers is not null || Adapter is not null;

    /// <summary>These overrides where they say something, <paramref name="under"/>'s elsewhere (a request's routing over its view's).</summary>
    public RouteOverrides Over(RouteOverrides? under) => under is null ? this : new(AllowedServers ?? under.AllowedServers,
        BlockedServers ?? under.BlockedServers, OnRoute ?? under.OnRoute, Adapter ?? under.Adapter);
}

/// <summary>Options of one inference step.</summary>
/// <param name="HypoIds">Beam search: row i continues old row HypoIds[i] (<c>[B]</c> int64); applied before the step.</param>
/// <param name="StartFromPosition">Rolls the cache back: the new tokens are written from this position on.</param>
/// <param name="OnBlockOutput">As in <see cref="ForwardOptions.OnBlockOutput"/>.</param>
/// <param name="Prompts">As in <see cref="ForwardOptions.Prompts"/>, added to this step's first P positions (prefill only, as Petals does).</param>
public sealed record StepOptions(Tensor? HypoIds = null, int? StartFromPosition = null, Action<int, Tensor>? OnBlockOutput = null,
    Tensor? Prompts = null);

/// <summary>
/// An inference session over a block stack: each step feeds new hidden states and keeps the cache. Prefer
/// <c>await using</c>: a remote session closes its streams to the servers asynchronously.
/// </summary>
public interface IBlockSession : IDisposable, IAsyncDisposable
{
    /// <summary>Tokens already in the cache.</summary>
    int Position { get; }

    SessionOptions Options { get; }

    /// <summary>Runs new hidden states <c>[B,T,H]</c> through every block and returns <c>[B,T,H]</c>.</summary>
    ValueTask<Tensor> StepAsync(Tensor hidden, StepOptions? options = null, CancellationToken cancellationToken = default);
}
