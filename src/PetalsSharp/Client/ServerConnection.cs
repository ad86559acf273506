using System.Collections.Concurrent;
using Grpc.Net.Client;
using PetalsSharp.Models;
using PetalsSharp.Swarm;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;

namespace PetalsSharp.Client;

/// <summary>A gRPC channel to one server and what its Info said.</summary>
public sealed class ServerConnection : IDisposable
{
    readonly GrpcChannel _channel;

    ServerConnection(string address, string? peerId, GrpcChannel channel, InfoReply info, RemoteOptions options, TimeSpan rtt)
    {
        PeerId = peerId;
        ConnectRtt = rtt;
        Address = address;
        _channel = channel;
        Client = new BlockService.BlockServiceClient(PetalsSharp.Dht.SwarmAuth.Apply(channel, options.SwarmKey));
        Info = info;
        Span = new ServerSpan(address, info.StartBlock, info.EndBlock);
    }

    public string Address { get; }

    /// <summary>The node id its TLS certificate was checked against (from its DHT record), or null when unpinned.</summary>
    public string? PeerId { get; }
    public BlockService.BlockServiceClient Client { get; }
    public InfoReply Info { get; }
    public ServerSpan Span { get; }

    /// <summary>Round trip of the Info call made when connecting.</summary>
    public TimeSpan ConnectRtt { get; }

    /// <summary>Times one Info round trip.</summary>
    public async Task<TimeSpan> PingAsync(CancellationToken ct)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        await Client.InfoAsync(new InfoRequest(), deadline: DateTime.UtcNow.AddSeconds(2), cancellationToken: ct).ConfigureAwait(false);
        return sw.Elapsed;
    }

    /// <summary>This server as the route planner sees it (peer id = address for servers known by address).</summary>
    public ServerInfo ToServerInfo() => new(Address, Address, Info.StartBlock, Info.EndBlock, ServerState.Online,
        Throughput: 0, InferenceRps: 0, Info.CacheTokensLeft, "", Info.WeightsDtype, Info.SoftwareVersion, Info.WeightsFingerprint,
        ServerInfo.ReadAdapters(Info.Adapters), DateTimeOffset.MaxValue)
    { Quant = ServerInfo.ReadQuant(Info.Quant), Relay = ServerInfo.ReadRelay(Info.Relay) };

    /// <summary>
    /// Connects to <paramref name="peer"/> ("HOST:PORT", or "HOST:PORT/NODE_ID" to accept only that node's TLS
    /// certificate), asks Info and checks that the server serves this model with a compatible protocol.
    /// </summary>
    public static async Task<ServerConnection> ConnectAsync(string peer, ModelConfig config, RemoteOptions options,
        CancellationToken cancellationToken = default, TimeSpan? timeout = null)
    {
        var target = PeerTarget.Parse(peer);
        var address = target.Address;
        var channel = PeerChannels.Create(PeerTarget.Dial(address, options.Tls && target.Tls, target.ExpectedId),
            new PeerChannelOptions(options.MaxMessageBytes));
        try
        {
            var client = new BlockService.BlockServiceClient(PetalsSharp.Dht.SwarmAuth.Apply(channel, options.SwarmKey));
            var sw = System.Diagnostics.Stopwatch.StartNew();
            var info = await client.InfoAsync(new InfoRequest(), deadline: DateTime.UtcNow + (timeout ?? options.ConnectTimeout),
                cancellationToken: cancellationToken).ConfigureAwait(false);
            if (info.ProtocolVersion != Protocol.Version)
                throw new SwarmException($"{address} speaks protocol v{info.ProtocolVersion}, this client v{Protocol.Version}");
            if (info.NumBlocks != config.NumLayers || info.HiddenSize != config.HiddenSize)
                throw new SwarmException($"{address} serves a model with {info.NumBlocks} blocks of width {info.HiddenSize}; this model has {config.NumLayers} of width {config.HiddenSize}");
            if (info.StartBlock < 0 || info.EndBlock > info.NumBlocks || info.StartBlock >= info.EndBlock)
                throw new SwarmException($"{address} announces an invalid span [{info.StartBlock}, {info.EndBlock})");
            if (info.BlockFingerprints.Count != info.EndBlock - info.StartBlock)
                throw new SwarmException($"{address} sent {info.BlockFingerprints.Count} block fingerprints for a span of {info.EndBlock - info.StartBlock}");
            return new ServerConnection(address, target.ExpectedId, channel, info, options, sw.Elapsed);
        }
        catch
        {
            channel.Dispose();
            throw;
        }
    }

    /// <summary>Throws when a block's fingerprint differs from the one the local files give.</summary>
    public void VerifyWeights(Func<int, string?> localFingerprint)
    {
        for (int i = Info.StartBlock; i < Info.EndBlock; i++)
        {
            var local = localFingerprint(i);
            var remote = Info.BlockFingerprints[i - Info.StartBlock];
            if (local is not null && local != remote)
                throw new SwarmException($"{Address} serves different weights for block {i} (fingerprint {remote}, local {local}); refusing it");
        }
    }

    public void Dispose() => _channel.Dispose();
}

/// <summary>Fingerprints of the local checkpoint's blocks, computed once, or null where the files lack the block.</summary>
public sealed class LocalFingerprints(Checkpoint? checkpoint)
{
    readonly ConcurrentDictionary<int, string?> _cache = new();

    public string? Get(int block) => checkpoint is null ? null : _cache.GetOrAdd(block, i =>
        checkpoint.Config.Family.BlockTensors(checkpoint.Config, i).All(s => checkpoint.Weights.HasFileFor(s.Name))
            ? checkpoint.BlockFingerprint(i)
            : null);
}
