using System.Collections.Concurrent;
using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PetalsSharp.Wire;

namespace PetalsSharp.Dht;

/// <summary>
/// A Kademlia DHT node whose records are signed by their owners: servers announce the blocks they serve here and
/// clients find them. Two ways to run one:
/// <list type="bullet">
/// <item><see cref="StartAsync"/>: the node hosts its own Kestrel gRPC server (HTTP/2 only) on Host:Port.</item>
/// <item>Inside an existing ASP.NET Core app (one port for the block service and the DHT):
/// <c>var dht = DhtNode.Create(options); dht.ConfigureServices(builder.Services); var app = builder.Build();
/// dht.MapService(app); await app.StartAsync(); dht.Start(app);</c> (or <c>dht.Start("host:port")</c>) then <see cref="BootstrapAsync"/>.
/// The app's endpoint must speak HTTP/2; the node's options (message size, swarm-key check) apply to the DHT
/// service only.</item>
/// <item>Client mode: <see cref="Create"/> and <see cref="BootstrapAsync"/> without <see cref="Start(string)"/>. The
/// node looks up, reads and stores, but announces no address, so peers never add it to their tables or ask it
/// for records.</item>
/// </list>
/// </summary>
public sealed partial class DhtNode : IAsyncDisposable
{
    readonly DhtNodeOptions _options;
    readonly bool _ownsIdentity;
    readonly RoutingTable _table;
    readonly RecordStore _store;
    readonly DhtRpc _rpc;
    readonly ILogger _log;
    readonly ConcurrentDictionary<string, SignedEntry> _owned = new(StringComparer.Ordinal);
    readonly CancellationTokenSource _stopping = new();
    readonly List<Task> _loops = [];
    WebApplication? _app;
    volatile string[] _initialPeers = [];
    V1.Contact _selfContact;
    int _started;

    DhtNode(DhtNodeOptions options)
    {
        options.Validate();
        _options = options;
        _log = options.Logger ?? Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;
        _ownsIdentity = options.Identity is null;
        Identity = options.Identity ?? NodeIdentity.CreateEphemeral();
        _table = new RoutingTable(Identity.Id, options.K, DateTimeOffset.UtcNow);
        _store = new RecordStore(options.MaxSubkeysPerKey, options.MaxStoredBytes, options.MaxTtl, options.MaxEntriesPerOwner);
        Quota = new RequestQuota(options.RequestsPerSecondPerAddress, options.RequestBurstPerAddress, options.QuotaExemptsLoopback);
        _selfContact = DhtWire.ToWire(new Contact(Identity.Id, Identity.PublicKey, ""));
        _rpc = new DhtRpc(Identity, () => _selfContact, options.SwarmKey, options.RpcTimeout, options.Tls);
    }

    /// <summary>This node's key pair.</summary>
    public NodeIdentity Identity { get; }

    /// <summary>This node's id (hash of its public key).</summary>
    public NodeId Id => Identity.Id;

    /// <summary>"host:port" announced to peers (<see cref="DhtNodeOptions.PublicAddress"/> if set); empty before <see cref="Start(string)"/>.</summary>
    public string Address { get; private set; } = "";

    /// <summary>What peers pass as an initial peer: "host:port/ID_HEX".</summary>
    public string PeerAddress => $"{Address}/{Id}";

    /// <summary>The options the node runs with.</summary>
    public DhtNodeOptions Options => _options;

    internal RoutingTable Table => _table;
    internal RecordStore Records => _store;

    /// <summary>The per-address request rate every DHT call is checked against.</summary>
    public RequestQuota Quota { get; }

    /// <summary>A node that is not reachable yet: register it in an app with <see cref="ConfigureServices"/> and <see cref="MapService"/>, then call <see cref="Start(string)"/>.</summary>
    public static DhtNode Create(DhtNodeOptions options) => new(options);

    /// <summary>Starts a node that hosts its own gRPC server on <see cref="DhtNodeOptions.Host"/>:<see cref="DhtNodeOptions.Port"/>.</summary>
    public static async Task<DhtNode> StartAsync(DhtNodeOptions options, CancellationToken cancellationToken = default)
    {
        var node = new DhtNode(options);
        try
        {
            var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [], ContentRootPath = AppContext.BaseDirectory });
            builder.Logging.ClearProviders();
            // The default console lifetime would take SIGINT/SIGTERM for itself; a library node leaves process signals
            // to the application (the CLI stops on them through its own cancellation token).
            builder.Services.AddSingleton<Microsoft.Extensions.Hosting.IHostLifetime, PassiveLifetime>();
            var ip = ResolveHost(options.Host);
            builder.WebHost.ConfigureKestrel(k => k.Listen(ip, options.Port, node.ConfigureListen));
            node.ConfigureServices(builder.Services);
            options.AddServices?.Invoke(builder.Services);
            var app = builder.Build();
            UseFrameGuard(app);
            node.MapService(app);
            options.MapServices?.Invoke(app);
            node._app = app;
            await app.StartAsync(cancellationToken).ConfigureAwait(false);
            node.Start(app);
            return node;
        }
        catch
        {
            await node.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// HTTP/2 only, over TLS with a certificate on this node's key unless <see cref="DhtNodeOptions.Tls"/> is off
    /// (plain-text gRPC must not offer HTTP/1.1: without TLS there is no ALPN to pick HTTP/2).
    /// </summary>
    public void ConfigureListen(ListenOptions listen)
    {
        listen.Protocols = HttpProtocols.Http2;
        if (_options.Tls) listen.UseHttps(_certificate ??= Identity.CreateCertificate());
    }

    System.Security.Cryptography.X509Certificates.X509Certificate2? _certificate;

    /// <summary>Registers this node and its gRPC service (with its message limits and swarm-key check) in an app's services.</summary>
    public void ConfigureServices(IServiceCollection services)
    {
        services.AddSingleton(this);
        services.AddGrpc().AddServiceOptions<DhtGrpcService>(o =>
        {
            o.MaxReceiveMessageSize = DhtLimits.MaxMessageBytes;
            o.MaxSendMessageSize = DhtLimits.MaxMessageBytes;
            SwarmAuth.Protect(o, _options.SwarmKey);
        });
    }

    /// <summary>
    /// Checks the length prefix of every gRPC message sent to the DHT service before the framework reads it (see
    /// <see cref="GrpcFrameGuard"/>); add it to the app before <see cref="MapService"/>.
    /// </summary>
    public static void UseFrameGuard(IApplicationBuilder app) =>
        app.UseGrpcFrameGuard(DhtLimits.MaxMessageBytes, "/" + V1.DhtService.Descriptor.FullName);

    /// <summary>Maps the DHT gRPC service into an app configured with <see cref="ConfigureServices"/>.</summary>
    public void MapService(IEndpointRouteBuilder endpoints) => endpoints.MapGrpcService<DhtGrpcService>();

    /// <summary>
    /// Makes the node live once its service is being served at <paramref name="listenAddress"/> ("host:port" that
    /// peers can dial; <see cref="DhtNodeOptions.PublicAddress"/> overrides it): sets <see cref="Address"/> and starts
    /// republishing, replication, bucket refresh and purging.
    /// </summary>
    public void Start(string listenAddress)
    {
        if (Interlocked.Exchange(ref _started, 1) != 0) throw new InvalidOperationException("the DHT node is already started");
        var address = _options.PublicAddress ?? listenAddress;
        DhtAddress.Parse(address);
        Address = address;
        _selfContact = DhtWire.ToWire(new Contact(Id, Identity.PublicKey, Address));
        _log.LogInformation("DHT node {Id} serving at {Address}{Private}", Id, Address, _options.SwarmKey is null ? "" : " (private swarm)");
        var ct = _stopping.Token;
        _loops.Add(LoopAsync("purge", _options.PurgePeriod, _ => { _store.Purge(DateTimeOffset.UtcNow); return Task.CompletedTask; }, ct));
        _loops.Add(LoopAsync("republish", _options.RepublishPeriod, RepublishAsync, ct));
        _loops.Add(LoopAsync("replicate", _options.ReplicatePeriod, ReplicateAsync, ct));
        _loops.Add(LoopAsync("refresh", _options.RefreshPeriod / 4, RefreshAsync, ct));
    }

    /// <summary>
    /// <see cref="Start(string)"/> for a node mapped into <paramref name="app"/>, after <c>app.StartAsync()</c>: the
    /// address is the app's first bound one, with a wildcard host (0.0.0.0, [::]) replaced by this machine's first
    /// non-loopback IPv4 (set <see cref="DhtNodeOptions.PublicAddress"/> when that guess is wrong).
    /// </summary>
    public void Start(WebApplication app)
    {
        var bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses.FirstOrDefault()
                    ?? throw new InvalidOperationException("the app has no bound address yet: call Start after app.StartAsync()");
        var uri = new Uri(bound.Replace("://+:", "://0.0.0.0:").Replace("://*:", "://0.0.0.0:"));
        var host = uri.Host.Trim('[', ']');
        Start($"{(IPAddress.TryParse(host, out var ip) ? AnnouncedHost(ip) : uri.Host)}:{uri.Port}");
    }

    /// <summary>The IP to listen on for a <c>--host</c> value: wildcards, "localhost", a literal or a name.</summary>
    internal static IPAddress ResolveHost(string host) => host switch
    {
        "0.0.0.0" or "*" or "" => IPAddress.Any,
        "::" => IPAddress.IPv6Any,
        "localhost" => IPAddress.Loopback,
        _ => IPAddress.TryParse(host, out var ip) ? ip
            : Dns.GetHostAddresses(host).FirstOrDefault() ?? throw new ArgumentException($"cannot resolve host '{host}'"),
    };

    /// <summary>
    /// What to announce when listening on a wildcard: the first non-loopback IPv4 of an interface that is up (peers
    /// cannot dial 0.0.0.0); set PublicAddress when that guess is wrong.
    /// </summary>
    internal static string AnnouncedHost(IPAddress ip)
    {
        if (!ip.Equals(IPAddress.Any) && !ip.Equals(IPAddress.IPv6Any))
            return ip.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{ip}]" : ip.ToString();
        var found = NetworkInterface.GetAllNetworkInterfaces()
            .Where(n => n.OperationalStatus == OperationalStatus.Up && n.NetworkInterfaceType != NetworkInterfaceType.Loopback)
            .SelectMany(n => n.GetIPProperties().UnicastAddresses)
            .Select(a => a.Address)
            .FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a));
        return (found ?? IPAddress.Loopback).ToString();
    }

    /// <summary>
    /// Signs <paramref name="value"/> under <paramref name="key"/> with this node's key (subkey = its id) and stores
    /// it on the k closest nodes (and here if this node is one of them). The record is republished every
    /// RepublishPeriod until it expires or <see cref="Forget"/>. Returns how many nodes accepted it.
    /// </summary>
    public async Task<int> StoreAsync(string key, ReadOnlyMemory<byte> value, DateTimeOffset expiration, CancellationToken cancellationToken = default)
    {
        if (DhtRecords.CheckKey(key) is { } keyError) throw new ArgumentException($"key '{key}': {keyError}");
        if (value.Length > DhtLimits.MaxValueBytes) throw new ArgumentException($"value of {value.Length} bytes exceeds {DhtLimits.MaxValueBytes}");
        var now = DateTimeOffset.UtcNow;
        if (expiration <= now) throw new ArgumentException("expiration is in the past");
        if (expiration > now + _options.MaxTtl) throw new ArgumentException($"expiration is more than MaxTtl ({_options.MaxTtl}) ahead");
        var entry = DhtRecords.Sign(Identity, key, value.Span, expiration);
        _owned[key] = entry;
        return await PublishAsync(entry, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Stops republishing this node's record under <paramref name="key"/> (it lives on until it expires).</summary>
    public bool Forget(string key) => _owned.TryRemove(key, out _);

    /// <summary>
    /// The verified, unexpired entries of <paramref name="key"/>, one per subkey (latest expiration), gathered from
    /// the k closest nodes. Every signature is checked here: a peer's copy is never trusted.
    /// </summary>
    public async Task<IReadOnlyList<DhtEntry>> GetAsync(string key, CancellationToken cancellationToken = default)
    {
        if (DhtRecords.CheckKey(key) is { } keyError) throw new ArgumentException($"key '{key}': {keyError}");
        var lookup = await LookupAsync(NodeId.ForKey(key), key, cancellationToken).ConfigureAwait(false);
        var now = DateTimeOffset.UtcNow;
        return DhtRecords.MergeVerified(key, lookup.Entries.Concat(_store.Get(key, now)), now).Select(e => e.ToEntry()).ToList();
    }

    /// <summary><see cref="GetAsync"/> for several keys at once (a few lookups in parallel).</summary>
    public async Task<IReadOnlyDictionary<string, IReadOnlyList<DhtEntry>>> GetManyAsync(IEnumerable<string> keys,
        CancellationToken cancellationToken = default)
    {
        var result = new ConcurrentDictionary<string, IReadOnlyList<DhtEntry>>(StringComparer.Ordinal);
        await Parallel.ForEachAsync(keys.Distinct(StringComparer.Ordinal),
            new ParallelOptions { MaxDegreeOfParallelism = 8, CancellationToken = cancellationToken },
            async (key, ct) => result[key] = await GetAsync(key, ct).ConfigureAwait(false)).ConfigureAwait(false);
        return result;
    }

    /// <summary>Stops maintenance and, when the node hosts its own server, stops serving.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_stopping.IsCancellationRequested) return;
        _stopping.Cancel();
        try { await Task.WhenAll(_loops).ConfigureAwait(false); }
        catch (OperationCanceledException) { }
        if (_app is not null)
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(2));
            try { await _app.StopAsync(timeout.Token).ConfigureAwait(false); }
            catch (OperationCanceledException) { }
            await _app.DisposeAsync().ConfigureAwait(false);
        }
        // A host app (a server's) may still be closing connections with it; the finalizer frees it there.
        if (_app is not null) _certificate?.Dispose();
        if (_ownsIdentity) Identity.Dispose();
    }
}

/// <summary>A host lifetime that neither waits for nor reacts to process signals.</summary>
sealed class PassiveLifetime : Microsoft.Extensions.Hosting.IHostLifetime
{
    public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
