using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using PetalsSharp.Relay.V1;

namespace PetalsSharp.Relay;

/// <summary>The relay's gRPC face (<c>petals.relay.v1.RelayService</c>), hosted next to a DHT node or a block server.</summary>
[BindServiceMethod(typeof(RelayGrpcService), nameof(BindStrict))]
public sealed class RelayGrpcService(RelayHub hub) : RelayService.RelayServiceBase
{
    /// <summary>Binds with request parsing that answers INVALID_ARGUMENT to a malformed message (<see cref="Wire.StrictRequestBinder"/>).</summary>
    public static void BindStrict(ServiceBinderBase binder, RelayService.RelayServiceBase? service) =>
        RelayService.BindService(new Wire.StrictRequestBinder(binder), service);

    public override Task Register(IAsyncStreamReader<RegisterRequest> requestStream, IServerStreamWriter<RegisterReply> responseStream,
        ServerCallContext context) => hub.RegisterAsync(requestStream, responseStream, context.CancellationToken);

    public override Task Tunnel(IAsyncStreamReader<TunnelChunk> requestStream, IServerStreamWriter<TunnelChunk> responseStream,
        ServerCallContext context) => hub.TunnelAsync(requestStream, responseStream, context.CancellationToken);

    /// <summary>Registers the service for <paramref name="hub"/> (with the swarm-key check) in an app's services.</summary>
    public static void AddTo(IServiceCollection services, RelayHub hub, Dht.SwarmKey? swarmKey)
    {
        services.AddSingleton(hub);
        // A registered server that vanishes without closing its connection (power loss, a dropped link) must free
        // its slot and port: HTTP/2 pings find it within 40 s.
        services.Configure<Microsoft.AspNetCore.Server.Kestrel.Core.KestrelServerOptions>(k =>
        {
            k.Limits.Http2.KeepAlivePingDelay = TimeSpan.FromSeconds(20);
            k.Limits.Http2.KeepAlivePingTimeout = TimeSpan.FromSeconds(20);
        });
        services.AddGrpc().AddServiceOptions<RelayGrpcService>(o =>
        {
            o.MaxReceiveMessageSize = Splice.MaxChunkBytes + 1024;
            o.MaxSendMessageSize = Splice.MaxChunkBytes + 1024;
            Dht.SwarmAuth.Protect(o, swarmKey);
        });
    }

    /// <summary>Maps the service into an app configured with <see cref="AddTo"/>.</summary>
    public static void Map(IEndpointRouteBuilder endpoints) => endpoints.MapGrpcService<RelayGrpcService>();

    /// <summary>Checks message length prefixes of relay calls before the framework reads them (see <see cref="Wire.GrpcFrameGuard"/>).</summary>
    public static void UseFrameGuard(IApplicationBuilder app) =>
        Wire.GrpcFrameGuard.UseGrpcFrameGuard(app, Splice.MaxChunkBytes + 1024, "/" + RelayService.Descriptor.FullName);
}
