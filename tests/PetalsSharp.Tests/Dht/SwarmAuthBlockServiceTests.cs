using System.Net;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PetalsSharp.Dht;
using PetalsSharp.Wire.V1;
using Xunit;

namespace PetalsSharp.Tests.Dht;

/// <summary>The swarm key protects other services too: a stand-in BlockService with unary and streaming calls.</summary>
[Collection(DhtSocketsCollection.Name)]
public sealed class SwarmAuthBlockServiceTests
{
    sealed class EchoBlockService : BlockService.BlockServiceBase
    {
        public override Task<InfoReply> Info(InfoRequest request, ServerCallContext context) => Task.FromResult(new InfoReply { ModelName = "echo" });

        public override async Task Forward(IAsyncStreamReader<CallMessage> requestStream, IServerStreamWriter<CallMessage> responseStream,
            ServerCallContext context)
        {
            await foreach (var message in requestStream.ReadAllAsync()) await responseStream.WriteAsync(message);
        }
    }

    static async Task<(WebApplication App, string Address)> Serve(SwarmKey? key)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [] });
        builder.Logging.ClearProviders();
        // TLS like a real server: the swarm key's proofs ride on top of it.
        using var identity = NodeIdentity.CreateEphemeral();
        var certificate = identity.CreateCertificate();
        builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, 0, l =>
        {
            l.Protocols = HttpProtocols.Http2;
            l.UseHttps(certificate);
        }));
        builder.Services.AddGrpc().AddServiceOptions<EchoBlockService>(o => SwarmAuth.Protect(o, key));
        var app = builder.Build();
        app.MapGrpcService<EchoBlockService>();
        await app.StartAsync();
        var bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return (app, new Uri(bound).Authority);
    }

    static async Task<List<CallMessage>> Echo(BlockService.BlockServiceClient client)
    {
        using var call = client.Forward();
        try
        {
            await call.RequestStream.WriteAsync(new CallMessage { Header = new CallHeader() });
            await call.RequestStream.CompleteAsync();
        }
        catch (RpcException)
        {
            // A server that refuses the call may answer before it reads: the write then fails (as Cancelled, on a
            // loaded machine), and the server's own status is the one the response carries.
        }
        return await call.ResponseStream.ReadAllAsync().ToListAsync();
    }

    [Fact]
    public async Task MembersCallOutsidersAreDeniedAndUnprovenServersAreRefused()
    {
        var key = SwarmKey.Generate();
        var (app, address) = await Serve(key);
        var (open, openAddress) = await Serve(null);
        await using (app)
        await using (open)
        {
            using var channel = TestChannels.Create(address);
            var member = new BlockService.BlockServiceClient(SwarmAuth.Apply(channel, key));
            Assert.Equal("echo", (await member.InfoAsync(new InfoRequest())).ModelName);
            Assert.Single(await Echo(member));

            foreach (var outsider in new[] { new BlockService.BlockServiceClient(channel), new BlockService.BlockServiceClient(SwarmAuth.Apply(channel, SwarmKey.Generate())) })
            {
                Assert.Equal(StatusCode.PermissionDenied, (await Assert.ThrowsAsync<RpcException>(() => outsider.InfoAsync(new InfoRequest()).ResponseAsync)).StatusCode);
                Assert.Equal(StatusCode.PermissionDenied, (await Assert.ThrowsAsync<RpcException>(() => Echo(outsider))).StatusCode);
            }

            // A member talking to a server outside the swarm refuses its answers (it cannot prove the key).
            using var openChannel = TestChannels.Create(openAddress);
            var misled = new BlockService.BlockServiceClient(SwarmAuth.Apply(openChannel, key));
            Assert.Equal(StatusCode.PermissionDenied, (await Assert.ThrowsAsync<RpcException>(() => misled.InfoAsync(new InfoRequest()).ResponseAsync)).StatusCode);
            Assert.Equal(StatusCode.PermissionDenied, (await Assert.ThrowsAsync<RpcException>(() => Echo(misled))).StatusCode);
            // Public mode: no key on either side, no headers, everything works.
            Assert.Equal("echo", (await new BlockService.BlockServiceClient(SwarmAuth.Apply(openChannel, null)).InfoAsync(new InfoRequest())).ModelName);
            await app.StopAsync();
            await open.StopAsync();
        }
    }
}
