using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using PetalsSharp.Models;
using static TorchSharp.torch;

namespace PetalsSharp.Server;

/// <summary>
/// Serves blocks <c>[StartBlock, EndBlock)</c> of one model over gRPC (<c>petals.v1.BlockService</c>). Only the
/// span's tensors are read from the checkpoint. Model compute runs on one <see cref="ComputeScheduler"/> thread;
/// KV caches are rationed by a <see cref="CacheBudget"/>.
/// </summary>
public sealed class BlockServer : IAsyncDisposable
{
    readonly Checkpoint _checkpoint;
    readonly ILoggerFactory _loggerFactory;
    readonly ILogger _logger;
    readonly CancellationTokenSource _stopping = new();
    WebApplication? _app;
    Dht.DhtNode? _dht;
    Announcer? _announcer;
    int _activeSessions;
    int _disposed;

    BlockServer(ServerOptions options, Checkpoint checkpoint, LocalBlockStack stack, ILoggerFactory loggerFactory)
    {
        Options = options;
        _checkpoint = checkpoint;
        Stack = stack;
        _loggerFactory = loggerFactory;
        _logger = loggerFactory.CreateLogger<BlockServer>();
        BlockFingerprints = Enumerable.Range(options.StartBlock, options.EndBlock - options.StartBlock)
            .Select(checkpoint.BlockFingerprint).ToArray();
        WeightsFingerprint = Checkpoint.SpanFingerprint(BlockFingerprints);
        WeightBytes = stack.Blocks.Sum(b => b.parameters().Sum(p => p.NumberOfElements * p.ElementSize));
        MaxSessionLength = options.ResolveMaxSessionLength(Config);
        // Sessions always keep float32 caches (LocalBlockSession), whatever dtype holds the weights.
        CacheBudget = new CacheBudget(options.ResolveCacheTokens(stack.CacheBytesPerToken(ScalarType.Float32)), SpanLength);
        Scheduler = new ComputeScheduler();
        Inboxes = new SessionInboxes(options, _logger);
    }

    /// <summary>Loads the span's blocks (reporting each loaded block to <paramref name="progress"/>); does not listen yet.</summary>
    /// <exception cref="ArgumentException">The options or the span do not fit the model.</exception>
    public static BlockServer Load(ServerOptions options, ILoggerFactory? loggerFactory = null, IProgress<int>? progress = null)
    {
        options.Validate();
        if (!Directory.Exists(options.ModelDir)) throw new DirectoryNotFoundException($"model folder not found: {options.ModelDir}");
        var checkpoint = Checkpoint.Open(options.ModelDir);
        try
        {
            int layers = checkpoint.Config.NumLayers;
            if (options.EndBlock > layers)
                throw new ArgumentException($"blocks {options.StartBlock}:{options.EndBlock} are outside the model, which has {layers} blocks (0:{layers})");
            var stack = checkpoint.LoadBlocks(options.StartBlock, options.EndBlock, options.WeightDtype, progress: progress);
            return new BlockServer(options, checkpoint, stack, loggerFactory ?? NullLoggerFactory.Instance);
        }
        catch
        {
            checkpoint.Dispose();
            throw;
        }
    }

    /// <summary>The options the server was loaded with.</summary>
    public ServerOptions Options { get; }

    /// <summary>The model's configuration.</summary>
    public ModelConfig Config => _checkpoint.Config;

    /// <summary>First served block.</summary>
    public int Start => Options.StartBlock;

    /// <summary>End of the served span (exclusive).</summary>
    public int End => Options.EndBlock;

    /// <summary>Blocks served.</summary>
    public int SpanLength => End - Start;

    /// <summary>One fingerprint per served block, in order.</summary>
    public IReadOnlyList<string> BlockFingerprints { get; }

    /// <summary>Hash over <see cref="BlockFingerprints"/>.</summary>
    public string WeightsFingerprint { get; }

    /// <summary>Bytes of the loaded weights.</summary>
    public long WeightBytes { get; }

    /// <summary>Largest max_length a session may ask for.</summary>
    public int MaxSessionLength { get; }

    /// <summary>Tensors read from the checkpoint so far (a server reads only its span's).</summary>
    public int LoadedTensorCount => _checkpoint.Weights.LoadedTensorCount;

    /// <summary>Open inference sessions.</summary>
    public int ActiveSessions => Volatile.Read(ref _activeSessions);

    /// <summary>Free KV-cache room, in tokens of one row across the span.</summary>
    public long CacheTokensLeft => CacheBudget.CacheTokensLeft;

    /// <summary>The bound address, "host:port" with the real port (127.0.0.1 when bound to every interface).</summary>
    public string Address { get; private set; } = "";

    /// <summary>The address announced to clients.</summary>
    public string PublicAddress => Options.PublicAddress ?? _dht?.Address ?? Address;

    /// <summary>"float32", "bfloat16" or "float16": how the weights are held.</summary>
    public string WeightsDtypeName => Options.WeightDtype switch
    {
        ScalarType.BFloat16 => "bfloat16", ScalarType.Float16 => "float16", _ => "float32",
    };

    /// <summary>The DHT node this server hosts on its own port, when it joined a swarm.</summary>
    public Dht.DhtNode? Dht => _dht;

    /// <summary>What the server measured about itself at start (announced in the DHT).</summary>
    public ThroughputInfo? Throughput { get; private set; }

    /// <summary>The state last announced to the swarm (JOINING, ONLINE, OFFLINE), or null without a DHT.</summary>
    public Wire.V1.ServerState? AnnouncedState => _announcer?.State;

    internal LocalBlockStack Stack { get; }
    internal CacheBudget CacheBudget { get; }
    internal ComputeScheduler Scheduler { get; }
    internal SessionInboxes Inboxes { get; }
    internal CancellationToken Stopping => _stopping.Token;
    internal void SessionOpened() => Interlocked.Increment(ref _activeSessions);
    internal void SessionClosed() => Interlocked.Decrement(ref _activeSessions);

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
        var address = await ResolveHostAsync(Options.Host, cancellationToken);
        builder.WebHost.ConfigureKestrel(k =>
        {
            // Plain-text gRPC needs HTTP/2 only: without TLS there is no ALPN to pick it.
            k.Listen(address, Options.Port, listen => listen.Protocols = HttpProtocols.Http2);
            k.Limits.MaxRequestBodySize = null;    // streams are bounded per message, not per call
        });
        builder.Services.AddGrpc(o =>
        {
            o.MaxReceiveMessageSize = Options.MaxMessageBytes;
            o.MaxSendMessageSize = Options.MaxMessageBytes;
        }).AddServiceOptions<BlockServiceImpl>(o => PetalsSharp.Dht.SwarmAuth.Protect(o, Options.SwarmKey));
        builder.Services.AddSingleton(new BlockServiceImpl(this, _loggerFactory.CreateLogger<BlockServiceImpl>()));
        if (Options.UsesDht)
        {
            // The DHT node shares the block service's port, so a server is one address for everything.
            _dht = PetalsSharp.Dht.DhtNode.Create(new PetalsSharp.Dht.DhtNodeOptions
            {
                Host = Options.Host, Port = Options.Port, PublicAddress = Options.PublicAddress, SwarmKey = Options.SwarmKey,
                Identity = Options.IdentityPath is null ? null : PetalsSharp.Dht.NodeIdentity.LoadOrCreate(Options.IdentityPath),
                Logger = _loggerFactory.CreateLogger("petals.dht"),
            });
            _dht.ConfigureServices(builder.Services);
        }
        var app = builder.Build();
        app.MapGrpcService<BlockServiceImpl>();
        _dht?.MapService(app);
        await app.StartAsync(cancellationToken);
        _app = app;
        if (_dht is not null) await JoinSwarmAsync(app, _dht, cancellationToken);
        var bound = new Uri(app.Urls.First());
        string host = IPAddress.Any.Equals(address) || IPAddress.IPv6Any.Equals(address) ? "127.0.0.1"
            : address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{address}]" : address.ToString();
        Address = $"{host}:{bound.Port}";
        _logger.LogDebug("serving {Model} blocks [{Start}, {End}) on {Address} (public {Public}), {WeightMb:F1} MB of {Dtype} weights, cache {Tokens} tokens",
            Options.ResolvedModelName, Start, End, Address, PublicAddress, WeightBytes / 1048576.0, Options.WeightDtype, CacheTokensLeft);
    }

    async Task JoinSwarmAsync(WebApplication app, PetalsSharp.Dht.DhtNode dht, CancellationToken ct)
    {
        dht.Start(app);
        if (Options.InitialPeers.Count > 0) await dht.BootstrapAsync(Options.InitialPeers, ct);
        Throughput = await Scheduler.RunAsync(ComputeScheduler.ForwardBackwardPriority, () => ThroughputInfo.Measure(Stack), ct);
        _announcer = new Announcer(this, dht, Throughput, _logger);
        await _announcer.StartAsync(ct);
        _logger.LogInformation("announced ONLINE in the swarm as {Peer} (prefix {Prefix}, throughput {Throughput:F0} tok/s)",
            dht.PeerAddress, Options.ResolvedDhtPrefix, Throughput.Throughput);
    }

    static async Task<IPAddress> ResolveHostAsync(string host, CancellationToken ct)
    {
        if (IPAddress.TryParse(host, out var ip)) return ip;
        if (host.Equals("localhost", StringComparison.OrdinalIgnoreCase)) return IPAddress.Loopback;
        var addresses = await Dns.GetHostAddressesAsync(host, ct);
        return addresses.FirstOrDefault(a => a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork)
            ?? addresses.FirstOrDefault() ?? throw new ArgumentException($"host '{host}' has no address");
    }

    /// <summary>Ends every session (their streams get UNAVAILABLE), stops listening and frees the caches.</summary>
    public async Task StopAsync()
    {
        var announcer = Interlocked.Exchange(ref _announcer, null);
        if (announcer is not null) await announcer.DisposeAsync();   // OFFLINE first, while the DHT still runs
        if (!_stopping.IsCancellationRequested) _stopping.Cancel();
        var dht = Interlocked.Exchange(ref _dht, null);
        if (dht is not null) await dht.DisposeAsync();
        var app = Interlocked.Exchange(ref _app, null);
        if (app is not null)
        {
            await app.StopAsync();
            await app.DisposeAsync();
        }
    }

    /// <summary>Stops the server and frees the weights and the compute thread.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        await StopAsync();
        Scheduler.Dispose();
        Inboxes.Dispose();
        Stack.Dispose();
        _checkpoint.Dispose();
        _stopping.Dispose();
    }

    sealed class ManualLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;
        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
