using System.Net;
using System.Net.Sockets;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using PetalsSharp.Relay.V1;
using PetalsSharp.Wire;

namespace PetalsSharp.Relay;

/// <summary>Where a relayed server is reached: the address the relay opened for it, and the relay ("HOST:PORT/ID").</summary>
public sealed record RelayState(string Address, string Relay);

/// <summary>How a relayed server keeps itself reachable.</summary>
/// <param name="NodeId">The server's node id (its TLS key): told to the relay for its logs.</param>
/// <param name="Local">The server's own listener (a Unix socket, or its TCP port that nobody outside can dial); each relayed connection is spliced into a new connection to it.</param>
/// <param name="FindRelays">Dial strings of the relays to try, best first (usually <see cref="RelayDirectory.FindAsync"/>).</param>
public sealed record RelayLinkOptions(string NodeId, EndPoint Local, Func<CancellationToken, Task<IReadOnlyList<string>>> FindRelays)
{
    public Dht.SwarmKey? SwarmKey { get; init; }
    public ILogger? Logger { get; init; }

    /// <summary>Wait before asking for relays again when none would take the server.</summary>
    public TimeSpan RetryDelay { get; init; } = TimeSpan.FromSeconds(1);
}

/// <summary>
/// A server's side of relaying: stays registered with one relay (the first that accepts), takes every connection
/// the relay offers by calling Tunnel and splicing it into a connection to its own listener, and registers with
/// another relay when the one it has dies. TLS runs inside the spliced bytes, end to end with the client.
/// </summary>
public sealed class RelayLink : IAsyncDisposable
{
    readonly RelayLinkOptions _options;
    readonly Func<RelayState, Task> _onRegistered;
    readonly ILogger _log;
    readonly CancellationTokenSource _stop = new();
    readonly TaskCompletionSource<RelayState> _first = new(TaskCreationOptions.RunContinuationsAsynchronously);
    readonly Task _loop;
    RelayState? _current;
    int _registrations;

    RelayLink(RelayLinkOptions options, Func<RelayState, Task> onRegistered)
    {
        _options = options;
        _onRegistered = onRegistered;
        _log = options.Logger ?? Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;
        _loop = Task.Run(LoopAsync);
    }

    /// <summary>Starts registering; <paramref name="onRegistered"/> runs after each (re-)registration, before connections are taken.</summary>
    public static RelayLink Start(RelayLinkOptions options, Func<RelayState, Task> onRegistered) => new(options, onRegistered);

    /// <summary>The registration in force, or null between relays.</summary>
    public RelayState? Current => Volatile.Read(ref _current);

    /// <summary>Registrations so far (a second one means a relay died and another took over).</summary>
    public int Registrations => Volatile.Read(ref _registrations);

    /// <summary>Waits for the first registration.</summary>
    /// <exception cref="TimeoutException">No relay accepted the server within <paramref name="timeout"/>.</exception>
    public async Task<RelayState> WaitRegisteredAsync(TimeSpan timeout, CancellationToken ct)
    {
        try { return await _first.Task.WaitAsync(timeout, ct).ConfigureAwait(false); }
        catch (TimeoutException) { throw new TimeoutException($"no relay accepted this server within {timeout.TotalSeconds:0} s (start one with `petals dht --relay`)"); }
    }

    async Task LoopAsync()
    {
        var ct = _stop.Token;
        var failedAt = new Dictionary<string, long>(StringComparer.Ordinal);
        while (!ct.IsCancellationRequested)
        {
            IReadOnlyList<string> relays;
            try { relays = await _options.FindRelays(ct).ConfigureAwait(false); }
            catch (Exception e) when (!ct.IsCancellationRequested)
            {
                _log.LogWarning("looking for relays failed: {Message}", e.Message);
                relays = [];
            }
            // Relays that never failed first, then the one that failed longest ago: a dead relay's record outlives it.
            var order = relays.Distinct(StringComparer.Ordinal).OrderBy(r => failedAt.GetValueOrDefault(r, long.MinValue)).ToList();
            bool served = false;
            foreach (var relay in order)
            {
                if (ct.IsCancellationRequested) return;
                long began = Environment.TickCount64;
                try { served = await RunAsync(relay, ct).ConfigureAwait(false); }
                catch (Exception) when (ct.IsCancellationRequested) { return; }   // stopping: the call ends as Cancelled
                catch (Exception e)
                {
                    _log.LogWarning("relay {Relay}: {Message}", relay, e is RpcException r ? $"{r.StatusCode} {r.Status.Detail}" : e.Message);
                }
                failedAt[relay] = Environment.TickCount64;
                Volatile.Write(ref _current, null);
                if (!served) continue;
                // A relay that accepts and drops at once must not spin the server through registrations.
                if (Environment.TickCount64 - began < MinRegistration.TotalMilliseconds)
                {
                    try { await Task.Delay(_options.RetryDelay, ct).ConfigureAwait(false); }
                    catch (OperationCanceledException) { return; }
                }
                break;   // read the DHT again: the relay that died may be the one it lists first
            }
            if (!served)
            {
                if (order.Count == 0) _log.LogWarning("no relay known to the swarm yet; asking again in {Delay:0.#} s", _options.RetryDelay.TotalSeconds);
                try { await Task.Delay(_options.RetryDelay, ct).ConfigureAwait(false); }
                catch (OperationCanceledException) { return; }
            }
        }
    }

    /// <summary>A registration shorter than this is followed by a pause before the next.</summary>
    static readonly TimeSpan MinRegistration = TimeSpan.FromSeconds(5);

    /// <summary>One registration, until the relay ends it or dies; true when it got as far as serving.</summary>
    async Task<bool> RunAsync(string relay, CancellationToken ct)
    {
        using var channel = PeerChannels.Create(relay, new PeerChannelOptions(Splice.MaxChunkBytes + 1024) { MultipleHttp2Connections = true });
        var client = new RelayService.RelayServiceClient(Dht.SwarmAuth.Apply(channel, _options.SwarmKey));
        using var call = client.Register(cancellationToken: ct);
        await call.RequestStream.WriteAsync(new RegisterRequest { NodeId = _options.NodeId }).ConfigureAwait(false);
        Registered registered;
        using (var first = CancellationTokenSource.CreateLinkedTokenSource(ct))
        {
            first.CancelAfter(TimeSpan.FromSeconds(10));
            if (!await call.ResponseStream.MoveNext(first.Token).ConfigureAwait(false)) throw new IOException("the relay ended the registration at once");
            registered = call.ResponseStream.Current.Registered ?? throw new IOException("the relay's first reply is not Registered");
        }
        if (!Dht.DhtAddress.TryParse(registered.Address, out var address, out _)) throw new IOException($"the relay offered an invalid address '{registered.Address}'");
        var target = PeerTarget.Parse(relay);
        // A relay offers ports on its own host; anything else would have this server announce someone else's address.
        if (RelayHost.HostOf(address) != RelayHost.HostOf(target.Address)) throw new IOException($"the relay at {target.Address} offered an address on another host ({address})");
        var state = new RelayState(address, target.ExpectedId is null ? target.Address : $"{target.Address}/{target.ExpectedId}");
        Volatile.Write(ref _current, state);
        Interlocked.Increment(ref _registrations);
        _log.LogInformation("reachable through relay {Relay} at {Address}", state.Relay, state.Address);
        await _onRegistered(state).ConfigureAwait(false);
        _first.TrySetResult(state);
        // The relay says how many connections it carries; more ids than that are a relay trying to exhaust us.
        int maxTunnels = registered.MaxConnections is > 0 and <= 4096 ? registered.MaxConnections : 64;
        var tunnels = new List<Task>();
        try
        {
            while (await call.ResponseStream.MoveNext(ct).ConfigureAwait(false))
            {
                if (call.ResponseStream.Current.Incoming is not { } incoming) continue;
                tunnels.RemoveAll(t => t.IsCompleted);
                if (tunnels.Count >= maxTunnels)
                {
                    _log.LogDebug("relay {Relay} offered more than {Max} connections at once; ignoring one", state.Relay, maxTunnels);
                    continue;
                }
                tunnels.Add(TunnelAsync(client, incoming.ConnectionId, ct));
            }
            _log.LogWarning("relay {Relay} ended the registration; registering again", state.Relay);
        }
        catch (Exception e) when (!ct.IsCancellationRequested)
        {
            _log.LogWarning("lost relay {Relay} ({Message}); registering with another", state.Relay, e is RpcException r ? r.StatusCode.ToString() : e.Message);
        }
        return true;
    }

    async Task TunnelAsync(RelayService.RelayServiceClient client, ulong id, CancellationToken ct)
    {
        try
        {
            using var call = client.Tunnel(cancellationToken: ct);
            await call.RequestStream.WriteAsync(new TunnelChunk { ConnectionId = id }).ConfigureAwait(false);
            var local = _options.Local;
            var socket = new Socket(local.AddressFamily, SocketType.Stream, local is UnixDomainSocketEndPoint ? ProtocolType.Unspecified : ProtocolType.Tcp);
            try
            {
                await socket.ConnectAsync(local, ct).ConfigureAwait(false);
                if (local is not UnixDomainSocketEndPoint) socket.NoDelay = true;
            }
            catch
            {
                socket.Dispose();
                throw;
            }
            await Splice.RunAsync(new NetworkStream(socket, ownsSocket: true), call.ResponseStream, (chunk, token) => call.RequestStream.WriteAsync(chunk, token),
                budget: null, first: null, ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is RpcException or IOException or SocketException or OperationCanceledException or InvalidOperationException)
        {
            _log.LogDebug("relayed connection {Id} ended: {Message}", id, e.Message);
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_stop.IsCancellationRequested) return;
        _stop.Cancel();
        try { await _loop.ConfigureAwait(false); }
        catch (Exception) { /* stopping: whatever the last call ended with no longer matters */ }
        _stop.Dispose();
    }
}
