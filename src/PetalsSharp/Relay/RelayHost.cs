using System.Net;
using PetalsSharp.Dht;

namespace PetalsSharp.Relay;

/// <summary>Hosting a relay next to a standalone DHT node (<c>petals dht --relay</c>).</summary>
public static class RelayHost
{
    /// <summary>The node's options with <paramref name="hub"/>'s gRPC service added to its app.</summary>
    public static DhtNodeOptions Attach(DhtNodeOptions options, RelayHub hub) => options with
    {
        AddServices = services => RelayGrpcService.AddTo(services, hub, options.SwarmKey),
        MapServices = app =>
        {
            RelayGrpcService.UseFrameGuard(app);
            RelayGrpcService.Map(app);
        },
    };

    /// <summary>The IP the per-server ports listen on, from the node's <c>--host</c> (as the node itself resolves it).</summary>
    public static IPAddress BindAddress(string host) => DhtNode.ResolveHost(host);

    /// <summary>"host" of "host:port" (brackets of an IPv6 literal kept).</summary>
    public static string HostOf(string hostPort) => hostPort.LastIndexOf(':') is > 0 and var colon ? hostPort[..colon] : hostPort;
}
