using System.Net;
using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Logging;
using PetalsSharp.Dht;
using Xunit;

namespace PetalsSharp.Tests.Dht;

/// <summary>The DHT service inside another ASP.NET Core app, and the owner's upkeep of its records.</summary>
[Collection(DhtSocketsCollection.Name)]
public sealed class DhtHostingTests
{
    [Fact]
    public async Task NodeHostedInsideAnExistingAppServesPeers()
    {
        var key = SwarmKey.Generate();
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [] });
        builder.Logging.ClearProviders();
        var hosted = DhtNode.Create(DhtTestSwarm.Options(key));
        // The node's own listen settings: HTTP/2 over TLS with a certificate on its key, as peers expect.
        builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, 0, hosted.ConfigureListen));
        hosted.ConfigureServices(builder.Services);
        await using var app = builder.Build();
        hosted.MapService(app);
        app.MapGet("/other", () => "the app's own endpoint, not protected by the DHT's swarm key");
        await app.StartAsync();
        await using (hosted)
        {
            hosted.Start(app);
            Assert.StartsWith("127.0.0.1:", hosted.Address);

            await using var peer = await DhtNode.StartAsync(DhtTestSwarm.Options(key));
            await peer.BootstrapAsync([hosted.PeerAddress]);
            Assert.Equal(2, await peer.StoreAsync("hosted.0", "v"u8.ToArray(), DateTimeOffset.UtcNow.AddMinutes(1)));
            Assert.Single(await hosted.GetAsync("hosted.0"));

            await using var outsider = await DhtNode.StartAsync(DhtTestSwarm.Options());
            var e = await Assert.ThrowsAsync<DhtException>(() => outsider.BootstrapAsync([hosted.PeerAddress]));
            Assert.Contains(nameof(StatusCode.PermissionDenied), e.Message);
        }
        await app.StopAsync();
    }

    [Fact]
    public async Task OwnersRepublishLostRecordsUntilForgotten()
    {
        await using var swarm = new DhtTestSwarm();
        var options = DhtTestSwarm.Options() with { RepublishPeriod = TimeSpan.FromSeconds(1), ReplicatePeriod = TimeSpan.FromMinutes(10) };
        for (int i = 0; i < 4; i++) await swarm.AddAsync(options);
        var owner = swarm.Nodes[0];
        Assert.Equal(4, await owner.StoreAsync("kept.0", "v"u8.ToArray(), DateTimeOffset.UtcNow.AddMinutes(1)));
        Assert.Equal(4, await owner.StoreAsync("forgotten.0", "v"u8.ToArray(), DateTimeOffset.UtcNow.AddMinutes(1)));
        Assert.True(owner.Forget("forgotten.0"));
        // Every holder loses its records (say, all restarted): only the owner's republishing brings a record back.
        foreach (var n in swarm.Nodes) n.Records.Clear();
        await Task.Delay(TimeSpan.FromSeconds(2.5));
        Assert.All(swarm.Nodes, n => Assert.Single(n.Records.Get("kept.0", DateTimeOffset.UtcNow)));
        Assert.All(swarm.Nodes, n => Assert.Empty(n.Records.Get("forgotten.0", DateTimeOffset.UtcNow)));
    }
}
