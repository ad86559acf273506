using Grpc.Core;
using Microsoft.Extensions.Logging;

namespace PetalsSharp.Dht;

// Joining the swarm through the initial peers, with retries: a peer that is still starting, a loaded machine or a
// slow WAN link must not turn into "could not join" on the first missed deadline.
public sealed partial class DhtNode
{
    static readonly TimeSpan FirstRetryDelay = TimeSpan.FromMilliseconds(250);
    static readonly TimeSpan MaxRetryDelay = TimeSpan.FromSeconds(8);
    // A slow peer gets more time on each attempt, but one attempt never eats most of the join budget.
    static readonly TimeSpan MaxAttemptDeadline = TimeSpan.FromSeconds(20);

    /// <summary>
    /// Joins the swarm through <paramref name="initialPeers"/> ("HOST:PORT", or "HOST:PORT/ID_HEX" to also check
    /// the peer's id), then looks up its own id to fill its buckets. Peers that cannot be reached are tried again
    /// with exponential backoff for up to <see cref="DhtNodeOptions.JoinTimeout"/>, each attempt with a longer RPC
    /// deadline; a peer that answers but refuses us (wrong swarm key, wrong id) is not retried. Throws when peers
    /// were given but none answered.
    /// </summary>
    public Task BootstrapAsync(IEnumerable<string> initialPeers, CancellationToken cancellationToken = default) =>
        JoinAsync(initialPeers, _options.JoinTimeout, cancellationToken);

    async Task JoinAsync(IEnumerable<string> initialPeers, TimeSpan budget, CancellationToken cancellationToken)
    {
        var given = initialPeers.ToArray();
        var peers = given.Select(DhtAddress.Parse).ToList();
        if (given.Length > 0) _initialPeers = given;
        int answered = 0;
        if (peers.Count > 0)
        {
            // Disposing the node ends a join that is still waiting for its peers.
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _stopping.Token);
            answered = await PingInitialPeersAsync(peers, budget, linked.Token).ConfigureAwait(false);
        }
        await LookupAsync(Id, null, cancellationToken).ConfigureAwait(false);
        _log.LogInformation("DHT node {Id} joined through {Answered}/{Peers} initial peers; {Contacts} contacts known", Id, answered, peers.Count, _table.Count);
    }

    /// <summary>Pings the peers in rounds until one answers; returns how many answered in the successful round.</summary>
    async Task<int> PingInitialPeersAsync(List<(string Address, NodeId? Id)> peers, TimeSpan budget, CancellationToken ct)
    {
        var giveUpAt = DateTime.UtcNow + budget;
        var pending = peers;
        var errors = new Dictionary<string, string>(StringComparer.Ordinal);
        for (int attempt = 1; ; attempt++)
        {
            var deadline = AttemptDeadline(attempt, giveUpAt - DateTime.UtcNow);
            var results = await Task.WhenAll(pending.Select(p => PingInitialPeerAsync(p, deadline, attempt, ct))).ConfigureAwait(false);
            int answered = results.Count(r => r.Error is null);
            if (answered > 0) return answered;
            foreach (var r in results) errors[r.Peer.Address] = r.Error!;
            pending = results.Where(r => r.Retry).Select(r => r.Peer).ToList();
            var left = giveUpAt - DateTime.UtcNow;
            var delay = RetryDelay(attempt);
            if (pending.Count == 0 || left <= delay)
                throw new DhtException($"could not join the DHT: no initial peer answered ({string.Join("; ", errors.Values)})");
            _log.LogWarning("could not join the DHT yet (attempt {Attempt}: {Reasons}); retrying in {Delay:F1} s, giving up in {Left:F0} s",
                attempt, string.Join("; ", pending.Select(p => errors[p.Address])), delay.TotalSeconds, left.TotalSeconds);
            await Task.Delay(delay, ct).ConfigureAwait(false);
        }
    }

    sealed record PingResult((string Address, NodeId? Id) Peer, string? Error, bool Retry);

    async Task<PingResult> PingInitialPeerAsync((string Address, NodeId? Id) peer, TimeSpan deadline, int attempt, CancellationToken ct)
    {
        try
        {
            Seen(await _rpc.PingAsync(peer.Address, peer.Id, ct, deadline).ConfigureAwait(false));
            return new(peer, null, false);
        }
        catch (Exception e) when (e is RpcException or DhtException && !ct.IsCancellationRequested)
        {
            var mismatch = Wire.PeerTls.IdentityMismatch(e);
            var why = mismatch?.Message ?? $"{peer.Address}: {(e is RpcException r ? $"{r.StatusCode} {r.Status.Detail}" : e.Message)}";
            _log.LogDebug("initial peer did not answer attempt {Attempt} (deadline {Deadline:F1} s): {Reason}", attempt, deadline.TotalSeconds, why);
            return new(peer, why, mismatch is null && IsTransient(e));
        }
    }

    /// <summary>
    /// Failures that may go away by themselves: nobody listening yet, a missed deadline, a peer shedding load. A peer
    /// that answered and refused (PermissionDenied from a private swarm, a different node id, a bad signature) would
    /// refuse again, and retrying it would only delay the error.
    /// </summary>
    static bool IsTransient(Exception e) => e is RpcException
    {
        StatusCode: StatusCode.Unavailable or StatusCode.DeadlineExceeded or StatusCode.ResourceExhausted or StatusCode.Aborted
        or StatusCode.Internal or StatusCode.Unknown or StatusCode.Cancelled,
    };

    /// <summary>RpcTimeout doubled per attempt, capped, and never past the end of the join budget.</summary>
    TimeSpan AttemptDeadline(int attempt, TimeSpan left)
    {
        var grown = _options.RpcTimeout * Math.Pow(2, Math.Min(attempt - 1, 10));
        var cap = MaxAttemptDeadline > _options.RpcTimeout ? MaxAttemptDeadline : _options.RpcTimeout;
        var deadline = grown < cap ? grown : cap;
        // The first attempt always gets the full RpcTimeout, so a zero budget still means one honest try.
        return attempt == 1 || deadline < left || left <= TimeSpan.Zero ? deadline : left;
    }

    /// <summary>Exponential backoff with "equal jitter" (half fixed, half random), so nodes started together spread out.</summary>
    static TimeSpan RetryDelay(int attempt)
    {
        var full = FirstRetryDelay * Math.Pow(2, Math.Min(attempt - 1, 10));
        if (full > MaxRetryDelay) full = MaxRetryDelay;
        return full / 2 + full / 2 * Random.Shared.NextDouble();
    }
}
