using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using PetalsSharp.Swarm;

namespace PetalsSharp.Client;

// Connecting to servers the DHT announces: a record proves nothing until its address answers.
internal sealed partial class RemotePool
{
    /// <summary>
    /// Connects to addresses announced in the DHT. A record is a claim anyone can sign with a fresh key, so an
    /// address is trusted only once it answered Info: every candidate is probed at once with the short
    /// <see cref="RemoteOptions.ProbeTimeout"/>, addresses that failed lately in this process are skipped, and once
    /// the servers that answered cover every block the rest get only <see cref="RemoteOptions.ProbeGrace"/> more
    /// (they join later if they answer). Only when that leaves a block uncovered is every candidate tried again
    /// with the long deadline, so a slow honest server still beats an empty route.
    /// </summary>
    async Task<List<Exception>> ProbeAsync(IReadOnlyCollection<string> addresses, CancellationToken ct)
    {
        var fresh = addresses.Where(a => !UnreachableServers.IsRemembered(Wire.PeerTarget.Parse(a).Address)).ToList();
        var errors = await AddAsync(fresh, Options.ProbeTimeout, untilCovered: true, ct).ConfigureAwait(false);
        if (Covers()) return errors;
        errors.AddRange(await AddAsync(addresses, Options.ConnectTimeout, untilCovered: true, ct).ConfigureAwait(false));
        return errors;
    }

    /// <summary>
    /// Probes the addresses not yet connected (joining probes already in flight) and waits for them all or, with
    /// <paramref name="untilCovered"/>, until the connected servers cover every block and a grace period passed.
    /// Returns the failures seen while waiting.
    /// </summary>
    async Task<List<Exception>> AddAsync(IEnumerable<string> addresses, TimeSpan timeout, bool untilCovered, CancellationToken ct)
    {
        var pending = new List<Task<Exception?>>();
        // Peers may carry the node id their record names ("host:port/ID"). One probe per address tries its ids in
        // turn: records of fresh keys naming an honest server's address fail their TLS handshakes without banning
        // it, and a thousand of them naming a hanging address cost one dial, not a thousand.
        foreach (var group in addresses.Distinct().GroupBy(a => Wire.PeerTarget.Parse(a).Address))
        {
            var address = group.Key;
            if (_servers.ContainsKey(address)) continue;
            var probe = new TaskCompletionSource<Exception?>(TaskCreationOptions.RunContinuationsAsynchronously);
            var task = _probing.GetOrAdd(address, probe.Task);
            if (task == probe.Task) _ = RunProbeAsync(address, [.. group], timeout, probe, ct);
            pending.Add(task);
        }
        var errors = new List<Exception>();
        Task? graceOver = null;
        while (pending.Count > 0)
        {
            if (graceOver is null && untilCovered && Covers()) graceOver = Task.Delay(Options.ProbeGrace, ct);
            var any = Task.WhenAny(pending);
            if (graceOver is not null && await Task.WhenAny(any, graceOver).ConfigureAwait(false) == graceOver) break;
            await any.ConfigureAwait(false);
            foreach (var done in pending.Where(t => t.IsCompleted).ToList())
            {
                pending.Remove(done);
                if (await done.ConfigureAwait(false) is { } error) errors.Add(error);
            }
        }
        ct.ThrowIfCancellationRequested();
        return errors;
    }

    async Task RunProbeAsync(string address, IReadOnlyList<string> peers, TimeSpan timeout, TaskCompletionSource<Exception?> probe, CancellationToken ct)
    {
        Exception? error = null;
        UnreachableServers.ProbeStarted(address);
        try
        {
            var server = await ConnectAnyAsync(peers, timeout, ct).ConfigureAwait(false);
            try { server.VerifyWeights(_fingerprints.Get); }
            catch
            {
                server.Dispose();
                throw;
            }
            UnreachableServers.Answered(address);
            if (!_servers.TryAdd(server.Address, server)) server.Dispose();
            else if (_closed && _servers.TryRemove(new KeyValuePair<string, ServerConnection>(server.Address, server))) server.Dispose();
            else ObserveRtt(server.Address, server.ConnectRtt.TotalSeconds);
        }
        catch (Exception e) when (e is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            UnreachableServers.Failed(address, Options.UnreachableMemory);
            error = e;
        }
        catch (OperationCanceledException e)
        {
            error = e;
        }
        UnreachableServers.ProbeEnded(address);
        _probing.TryRemove(new KeyValuePair<string, Task<Exception?>>(address, probe.Task));
        probe.SetResult(error);
    }

    /// <summary>
    /// Connects to the first of <paramref name="peers"/> (one address, several claimed ids) whose id the server's
    /// certificate proves. A failure other than a wrong identity is the address's, and ends the attempt.
    /// </summary>
    async Task<ServerConnection> ConnectAnyAsync(IReadOnlyList<string> peers, TimeSpan timeout, CancellationToken ct)
    {
        var wrong = new List<string>();
        foreach (var peer in peers.Take(MaxIdsPerAddress))
        {
            try { return await ServerConnection.ConnectAsync(peer, Config, Options, ct, timeout).ConfigureAwait(false); }
            catch (Exception e) when (Wire.PeerTls.IdentityMismatch(e) is { } mismatch)
            {
                Options.Logger.LogWarning("refusing {Peer}: {Message}", peer, mismatch.Message);
                wrong.Add(mismatch.Message);
            }
        }
        throw new SwarmException(wrong.Count == 1 ? wrong[0] : $"{peers.Count} records name {Wire.PeerTarget.Parse(peers[0]).Address}; " +
            $"none is the node that answers there ({wrong.FirstOrDefault()})");
    }

    /// <summary>Ids tried per address: every one of them costs a TLS handshake.</summary>
    const int MaxIdsPerAddress = 64;

    /// <summary>Whether the connected, unbanned servers hold every block.</summary>
    bool Covers()
    {
        var covered = new bool[Config.NumLayers];
        foreach (var s in _servers.Values)
            if (!IsBanned(s.Address))
                for (int i = Math.Max(0, s.Info.StartBlock); i < Math.Min(covered.Length, s.Info.EndBlock); i++) covered[i] = true;
        return covered.All(c => c);
    }
}
