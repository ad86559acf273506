using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using PetalsSharp.Models;
using PetalsSharp.Wire;
using static TorchSharp.torch;

namespace PetalsSharp.Server;

/// <summary>
/// Serves a span of one model's blocks over gRPC (<c>petals.v1.BlockService</c>). Only the span's tensors are read
/// from the checkpoint. Model compute runs on one <see cref="ComputeScheduler"/> thread; KV caches are rationed by
/// the span's <see cref="CacheBudget"/>. The span is a replaceable <see cref="ServedSpan"/>: an auto-placed server
/// (<see cref="ServerOptions.NumBlocks"/>) chooses it after joining the swarm and may move it later, while the
/// gRPC host, the DHT node and the compute thread stay.
/// </summary>
public sealed partial class BlockServer : IAsyncDisposable
{
    readonly Checkpoint _checkpoint;
    readonly ILoggerFactory _loggerFactory;
    readonly ILogger _logger;
    readonly CancellationTokenSource _stopping = new();
    WebApplication? _app;
    Dht.DhtNode? _dht;
    Announcer? _announcer;
    Rebalancer? _rebalancer;
    MetricsEndpoint? _metricsEndpoint;
    PrometheusExporter? _exporter;
    ServedSpan? _span;
    int _activeSessions;
    int _moves;
    int _disposed;

    BlockServer(ServerOptions options, Checkpoint checkpoint, ServedSpan? span, Models.Lora.LoraAdapterSet adapters, ILoggerFactory loggerFactory)
    {
        Options = options;
        Adapters = adapters;
        _checkpoint = checkpoint;
        _span = span;
        _loggerFactory = loggerFactory;
        _logger = loggerFactory.CreateLogger<BlockServer>();
        MaxSessionLength = options.ResolveMaxSessionLength(Config);
        Scheduler = new ComputeScheduler(onIdle: () => Current?.Stack.TrimPages());
        Steps = new StepBatcher(Scheduler, options.PrefillChunkRows);
        RequestMemory = new RequestMemory(options.MaxRequestMemoryBytes);
        Peers = new PeerChannels(new PeerChannelOptions(options.MaxMessageBytes));
        Inboxes = new SessionInboxes(options, Peers, _logger);
        PushTargets = new PushTargets(this);
        Metrics = new ServerMetrics(this);
    }

    /// <summary>
    /// Loads a fixed span's blocks (reporting each loaded block to <paramref name="progress"/>); an auto-placed
    /// server only opens the checkpoint here and loads in <see cref="StartAsync"/>. Does not listen yet.
    /// </summary>
    /// <exception cref="ArgumentException">The options or the span do not fit the model.</exception>
    public static BlockServer Load(ServerOptions options, ILoggerFactory? loggerFactory = null, IProgress<int>? progress = null)
    {
        options.Validate();
        if (!Directory.Exists(options.ModelDir)) throw new DirectoryNotFoundException($"model folder not found: {options.ModelDir}");
        var checkpoint = Checkpoint.Open(options.ModelDir);
        try
        {
            int layers = checkpoint.Config.NumLayers;
            if (options.NumBlocks > layers)
                throw new ArgumentException($"--num-blocks {options.NumBlocks} is more than the model's {layers} blocks");
            // Adapters first: a bad one fails the start before minutes of block loading.
            var adapters = Models.Lora.LoraAdapterSet.Load(options.Adapters, checkpoint.Config);
            try
            {
                var span = options.AutoPlaced ? null : ServedSpan.Load(checkpoint, options, options.StartBlock, options.EndBlock, progress);
                return new BlockServer(options, checkpoint, span, adapters, loggerFactory ?? NullLoggerFactory.Instance);
            }
            catch
            {
                adapters.Dispose();
                throw;
            }
        }
        catch
        {
            checkpoint.Dispose();
            throw;
        }
    }

    /// <summary>Memory that Forward/Backward calls hold in received tensors, over all calls.</summary>
    public RequestMemory RequestMemory { get; }

    /// <summary>The options the server was loaded with.</summary>
    public ServerOptions Options { get; }

    /// <summary>LoRA adapters requests may choose with <c>active_adapter</c>.</summary>
    public Models.Lora.LoraAdapterSet Adapters { get; }

    /// <summary>The model's configuration.</summary>
    public ModelConfig Config => _checkpoint.Config;

    /// <summary>First served block (0 with an empty span while an auto-placed server has not chosen yet).</summary>
    public int Start => Current?.Start ?? 0;

    /// <summary>End of the served span (exclusive).</summary>
    public int End => Current?.End ?? 0;

    /// <summary>Blocks served.</summary>
    public int SpanLength => End - Start;

    /// <summary>One fingerprint per served block, in order.</summary>
    public IReadOnlyList<string> BlockFingerprints => Current?.BlockFingerprints ?? [];

    /// <summary>Hash over <see cref="BlockFingerprints"/>.</summary>
    public string WeightsFingerprint => Current?.WeightsFingerprint ?? "";

    /// <summary>Bytes of the loaded weights.</summary>
    public long WeightBytes => Current?.WeightBytes ?? 0;

    /// <summary>How many times the server moved to other blocks.</summary>
    public int Moves => Volatile.Read(ref _moves);

    /// <summary>Largest max_length a session may ask for.</summary>
    public int MaxSessionLength { get; }

    /// <summary>Tensors read from the checkpoint so far (a server reads only its span's).</summary>
    public int LoadedTensorCount => _checkpoint.Weights.LoadedTensorCount;

    /// <summary>Open inference sessions.</summary>
    public int ActiveSessions => Volatile.Read(ref _activeSessions);

    /// <summary>Free KV-cache room, in tokens of one row across the span.</summary>
    public long CacheTokensLeft => Current?.CacheBudget.CacheTokensLeft ?? 0;

    /// <summary>The bound address, "host:port" with the real port (127.0.0.1 when bound to every interface).</summary>
    public string Address { get; private set; } = "";

    /// <summary>The address announced to clients.</summary>
    public string PublicAddress => Volatile.Read(ref _relayState)?.Address ?? Options.PublicAddress ?? (_dht?.Address is { Length: > 0 } dht ? dht : Address);

    /// <summary>"float32", "bfloat16" or "float16": how the weights are held.</summary>
    public string WeightsDtypeName => Options.WeightDtype switch
    {
        ScalarType.BFloat16 => "bfloat16",
        ScalarType.Float16 => "float16",
        _ => "float32",
    };

    /// <summary>"none", "int8" or "nf4": the block format of the served linears, as Info and the DHT record say.</summary>
    public string QuantName => Models.Quant.QuantFormats.Name(Options.Quant);

    /// <summary>The DHT node this server hosts on its own port, when it joined a swarm.</summary>
    public Dht.DhtNode? Dht => _dht;

    /// <summary>What the server measured about itself at start (announced in the DHT).</summary>
    public ThroughputInfo? Throughput { get; private set; }

    /// <summary>The state last announced to the swarm (JOINING, ONLINE, OFFLINE), or null without a DHT.</summary>
    public Wire.V1.ServerState? AnnouncedState => _announcer?.State;

    /// <summary>Where Prometheus scrapes this server (<see cref="ServerOptions.MetricsPort"/>), or null without one.</summary>
    public string? MetricsUrl => _metricsEndpoint?.Url;

    internal ServerMetrics Metrics { get; }
    internal ServedSpan? Current => Volatile.Read(ref _span);
    internal ComputeScheduler Scheduler { get; }

    /// <summary>Runs inference steps on <see cref="Scheduler"/>, joining other sessions' steps into shared passes.</summary>
    internal StepBatcher Steps { get; }
    internal SessionInboxes Inboxes { get; }
    internal PushTargets PushTargets { get; }

    /// <summary>Channels to other servers (push targets, next-ping targets), one per address.</summary>
    internal PeerChannels Peers { get; }
    internal CancellationToken Stopping => _stopping.Token;
    internal void SessionOpened() => Interlocked.Increment(ref _activeSessions);
    internal void SessionClosed()
    {
        Interlocked.Decrement(ref _activeSessions);
        Scheduler.TrimWhenIdle();   // its pages went back to the pool: an idle server gives them back to the system
    }

    /// <summary>Starts listening; afterwards <see cref="Address"/> holds the bound address.</summary>
    public async Task StartAsync(CancellationToken cancellationToken = default)
    {
        if (_app is not null) throw new InvalidOperationException("the server is already started");
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            ApplicationName = "PetalsSharp.Server", ContentRootPath = AppContext.BaseDirectory,
        });
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton(_loggerFactory);
        // The host must not install its own Ctrl+C/SIGTERM handlers: the CLI (or the test) decides when to stop.
        builder.Services.AddSingleton<IHostLifetime, ManualLifetime>();
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(5));
        if (Options.UsesDht)
        {
            // The DHT node shares the block service's port, so a server is one address for everything.
            _dht = PetalsSharp.Dht.DhtNode.Create(new PetalsSharp.Dht.DhtNodeOptions
            {
                Host = Options.Host, Port = Options.Port, PublicAddress = Options.PublicAddress, SwarmKey = Options.SwarmKey, Tls = Options.Tls,
                JoinTimeout = Options.JoinTimeout,
                Identity = Options.IdentityPath is null ? null : PetalsSharp.Dht.NodeIdentity.LoadOrCreate(Options.IdentityPath),
                Logger = _loggerFactory.CreateLogger("petals.dht"),
            });
            _dht.ConfigureServices(builder.Services);
        }
        var address = await ResolveHostAsync(Options.Host, cancellationToken);
        builder.WebHost.ConfigureKestrel(k =>
        {
            void Configure(ListenOptions listen)
            {
                // The DHT node's certificate when there is one: clients pin the key that signed this server's record.
                if (_dht is not null) _dht.ConfigureListen(listen);
                else
                {
                    listen.Protocols = HttpProtocols.Http2;   // plain-text gRPC: no ALPN to pick HTTP/2
                    if (Options.Tls) listen.UseHttps(_certificate ??= CreateCertificate());
                }
            }
            if (Options.Reachability == Reachability.Relay) ListenUnix(k, Configure);
            else k.Listen(address, Options.Port, Configure);
            k.Limits.MaxRequestBodySize = null;    // streams are bounded per message, not per call
        });
        AddRelayService(builder, address);
        builder.Services.AddGrpc(o =>
        {
            o.MaxReceiveMessageSize = Options.MaxMessageBytes;
            o.MaxSendMessageSize = Options.MaxMessageBytes;
        }).AddServiceOptions<BlockServiceImpl>(o => PetalsSharp.Dht.SwarmAuth.Protect(o, Options.SwarmKey));
        builder.Services.AddSingleton(new BlockServiceImpl(this, _loggerFactory.CreateLogger<BlockServiceImpl>()));
        var app = builder.Build();
        app.UseGrpcFrameGuard(Options.MaxMessageBytes, "/" + Wire.V1.BlockService.Descriptor.FullName);
        if (_dht is not null) PetalsSharp.Dht.DhtNode.UseFrameGuard(app);
        app.MapGrpcService<BlockServiceImpl>();
        _dht?.MapService(app);
        MapRelayService(app);
        await app.StartAsync(cancellationToken);
        _app = app;
        if (_unixSocket is not null) Address = "unix:" + _unixSocket;
        else
        {
            var bound = new Uri(app.Urls.First());
            string host = IPAddress.Any.Equals(address) || IPAddress.IPv6Any.Equals(address) ? "127.0.0.1"
                : address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{address}]" : address.ToString();
            Address = $"{host}:{bound.Port}";
            _boundIp = address;
            _localTcp = new IPEndPoint(IPAddress.Any.Equals(address) ? IPAddress.Loopback : IPAddress.IPv6Any.Equals(address) ? IPAddress.IPv6Loopback : address, bound.Port);
        }
        if (_dht is not null) await JoinSwarmAsync(app, _dht, cancellationToken);
        if (Options.MetricsPort is { } metricsPort)
        {
            _exporter = PrometheusExporter.ForScope(this);
            _metricsEndpoint = await MetricsEndpoint.StartAsync(address, metricsPort, _exporter, cancellationToken);
        }
        _logger.LogDebug("serving {Model} blocks [{Start}, {End}) on {Address} (public {Public}), {WeightMb:F1} MB of {Dtype} weights, cache {Tokens} tokens",
            Options.ResolvedModelName, Start, End, Address, PublicAddress, WeightBytes / 1048576.0, Options.Quant == Models.Quant.QuantFormat.None ? Options.WeightDtype.ToString() : QuantName, CacheTokensLeft);
    }

    static async Task<IPAddress> ResolveHostAsync(string host, CancellationToken ct)
    {
        if (IPAddress.TryParse(host, out var ip)) return ip;
        if (host.Equals("localhost", StringComparison.OrdinalIgnoreCase)) return IPAddress.Loopback;
        var addresses = await Dns.GetHostAddressesAsync(host, ct);
        return addresses.FirstOrDefault(a => a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork)
            ?? addresses.FirstOrDefault() ?? throw new ArgumentException($"host '{host}' has no address");
    }

    /// <summary>The TLS certificate of a server without a DHT node: on its identity file's key, or a key of this run.</summary>
    System.Security.Cryptography.X509Certificates.X509Certificate2 CreateCertificate()
    {
        using var identity = Options.IdentityPath is null
            ? PetalsSharp.Dht.NodeIdentity.CreateEphemeral()
            : PetalsSharp.Dht.NodeIdentity.LoadOrCreate(Options.IdentityPath);
        return identity.CreateCertificate();
    }

    System.Security.Cryptography.X509Certificates.X509Certificate2? _certificate;

    /// <summary>Ends every session (their streams get UNAVAILABLE), stops listening and frees the caches.</summary>
    public async Task StopAsync()
    {
        var rebalancer = Interlocked.Exchange(ref _rebalancer, null);
        if (rebalancer is not null) await rebalancer.DisposeAsync();   // no move may start while stopping
        var announcer = Interlocked.Exchange(ref _announcer, null);
        if (announcer is not null) await announcer.DisposeAsync();   // OFFLINE first, while the DHT still runs
        if (!_stopping.IsCancellationRequested) _stopping.Cancel();
        await StopRelayAsync();
        var dht = Interlocked.Exchange(ref _dht, null);
        if (dht is not null) await dht.DisposeAsync();
        var app = Interlocked.Exchange(ref _app, null);
        if (app is not null)
        {
            await app.StopAsync();
            await app.DisposeAsync();
        }
        var metrics = Interlocked.Exchange(ref _metricsEndpoint, null);
        if (metrics is not null) await metrics.DisposeAsync();
        Interlocked.Exchange(ref _exporter, null)?.Dispose();
    }

    /// <summary>Stops the server and frees the weights and the compute thread.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        await StopAsync();
        Scheduler.Dispose();
        Steps.Dispose();
        Inboxes.Dispose();
        Peers.Dispose();
        Current?.Stack.Dispose();
        Adapters.Dispose();
        _checkpoint.Dispose();
        Metrics.Dispose();
        _stopping.Dispose();
    }

    sealed class ManualLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;
        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
