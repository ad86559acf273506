using PetalsSharp.Models;

namespace PetalsSharp.Client;

/// <summary>The servers a remote stack (and its slices) may use, with their connections.</summary>
internal sealed class RemotePool : IDisposable
{
    readonly Dictionary<string, ServerConnection> _byAddress;

    IAsyncDisposable? _owned;

    RemotePool(ModelConfig config, RemoteOptions options, IReadOnlyList<ServerConnection> servers)
    {
        Config = config;
        Options = options;
        Servers = servers;
        _byAddress = servers.ToDictionary(s => s.Address);
    }

    public ModelConfig Config { get; }
    public RemoteOptions Options { get; }
    public IReadOnlyList<ServerConnection> Servers { get; }

    public ServerConnection Get(string address) => _byAddress[address];

    /// <summary>Failures inside autograd backward nodes, which cannot throw (see RemoteSequential.Backward).</summary>
    public System.Collections.Concurrent.ConcurrentQueue<Exception> BackwardErrors { get; } = new();

    public static async Task<RemotePool> ConnectAsync(ModelConfig config, IEnumerable<string> peers, RemoteOptions options,
        Checkpoint? local, CancellationToken ct)
    {
        var addresses = peers.Select(p => p.Trim()).Where(p => p.Length > 0).Distinct().ToList();
        if (addresses.Count == 0) throw new ArgumentException("no peers given");
        var connections = new List<ServerConnection>();
        try
        {
            var fingerprints = new LocalFingerprints(options.VerifyWeights ? local : null);
            foreach (var task in addresses.Select(a => ServerConnection.ConnectAsync(a, config, options, ct)).ToList())
            {
                var server = await task.ConfigureAwait(false);
                connections.Add(server);
                server.VerifyWeights(fingerprints.Get);
            }
            return new RemotePool(config, options, connections);
        }
        catch
        {
            foreach (var c in connections) c.Dispose();
            throw;
        }
    }

    /// <summary>Something whose life ends with the pool (the client's DHT node).</summary>
    public void Own(IAsyncDisposable resource) => _owned = resource;

    public void Dispose()
    {
        foreach (var s in Servers) s.Dispose();
        _owned?.DisposeAsync().AsTask().GetAwaiter().GetResult();
    }
}
