using System.Diagnostics;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Google.Protobuf;
using Grpc.Net.Client;
using PetalsSharp.Client;
using PetalsSharp.Dht.V1;
using PetalsSharp.Generation;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Testing;
using PetalsSharp.Wire.V1;
using Xunit;

namespace PetalsSharp.Tests.Security;

/// <summary>
/// The targets, as real processes on 127.0.0.1: a standalone <c>petals dht</c> node, a <c>petals server</c> holding
/// every block of stories260K that joined it (so its port also answers the DHT service), and a <c>petals api --local</c>
/// over the same model. A client generating through the server and greedy API completions play the healthy users;
/// both must reproduce stories260K's reference continuations exactly however the attacks go.
/// </summary>
public sealed class CampaignSwarm : IAsyncLifetime
{
    public const string ModelId = "stories260K";

    /// <summary>Seconds the server waits for the next message of a Forward/Backward upload: slow-loris uploads meet it.</summary>
    public const int RequestReadTimeoutSeconds = 2;

    public string ModelDir { get; } = Fixtures.Stories260KDir ?? PetalsSharp.Cli.Commands.DemoModel.Ensure();
    public ServerProcess Server { get; private set; } = null!;
    public ChildProcess Dht { get; private set; } = null!;
    public ChildProcess Api { get; private set; } = null!;
    public string DhtAddress { get; private set; } = "";
    public HttpClient Http { get; private set; } = null!;
    public IReadOnlyList<(string Prompt, int[] Ids, string Text)> Continuations { get; private set; } = [];
    CausalLM _remote = null!;

    public async Task InitializeAsync()
    {
        using (var reference = Reference.LoadFrom(ModelDir))
            Continuations = reference["continuations"].EnumerateArray().Select(c => (c.GetProperty("prompt").GetString()!,
                c.GetProperty("new_token_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray(), c.GetProperty("new_text").GetString()!)).ToList();
        Dht = ChildProcess.Start(["dht", "--host", "127.0.0.1", "--port", "0", "--relay"]);   // a relay too: its service is attacked as well
        var peers = await Dht.WaitForLineAsync("initial peers: ");
        DhtAddress = PetalsSharp.Dht.DhtAddress.Parse(peers).Address;
        Api = ChildProcess.Start(["api", "--model", ModelDir, "--local", "--port", "0", "--max-request-bytes", "2000000"]);
        Server = await ServerProcess.StartAsync(ModelDir, 0, 5, "--initial-peers", peers, "--throughput", "100",
            "--request-read-timeout", $"{RequestReadTimeoutSeconds}");
        Http = new HttpClient { BaseAddress = new Uri(await Api.WaitForLineAsync("listening on ")), Timeout = TimeSpan.FromSeconds(60) };
        _remote = await DistributedModel.ConnectAsync(ModelDir, [Server.Address]);
        using var channel = CampaignChannels.Create(Server.Address);
        _cacheTokens = (await new BlockService.BlockServiceClient(channel).InfoAsync(new InfoRequest())).CacheTokensLeft;
    }

    long _cacheTokens;

    public Task DisposeAsync()
    {
        _remote?.Dispose();
        Http?.Dispose();
        Server?.Dispose();
        Api?.Dispose();
        Dht?.Dispose();
        return Task.CompletedTask;
    }

    /// <summary>One round of the healthy client: every reference prompt, greedy, through the server; returns tokens checked.</summary>
    public async Task<int> HealthyGenerationAsync()
    {
        int tokens = 0;
        foreach (var (prompt, ids, text) in Continuations)
        {
            var result = await _remote.GenerateAsync([prompt], new GenerationOptions { MaxNewTokens = ids.Length, IgnoreEos = true });
            Assert.Equal(ids, result.NewTokens[0]);
            Assert.Equal(text, result.Texts[0]);
            tokens += ids.Length;
        }
        return tokens;
    }

    /// <summary>One round of the healthy API user: greedy completions of the reference prompts; returns tokens checked.</summary>
    public async Task<int> HealthyCompletionsAsync()
    {
        int tokens = 0;
        foreach (var (prompt, ids, text) in Continuations)
        {
            var body = JsonSerializer.Serialize(new
            {
                model = ModelId, prompt, max_tokens = ids.Length, temperature = 0, petals = new { ignore_eos = true },
            });
            using var reply = await Http.PostAsync("/v1/completions", new StringContent(body, Encoding.UTF8, "application/json"));
            var json = await reply.Content.ReadAsStringAsync();
            Assert.True(reply.StatusCode == HttpStatusCode.OK, json);
            Assert.Equal(text, (string?)JsonNode.Parse(json)!["choices"]![0]!["text"]);
            tokens += ids.Length;
        }
        return tokens;
    }

    /// <summary>Every process is still running and answers: Info from the server, Ping from both DHT nodes, /v1/models from the API.</summary>
    public async Task AssertAliveAndAnsweringAsync()
    {
        Assert.True(ChildProcess.IsAlive(Server.Id), $"the server died:\n{Server.Log}");
        Assert.True(Dht.IsRunning, $"the DHT node died:\n{Dht.Log}");
        Assert.True(Api.IsRunning, $"the API died:\n{Api.Log}");
        using (var channel = CampaignChannels.Create(Server.Address))
        {
            var client = new BlockService.BlockServiceClient(channel);
            var info = await client.InfoAsync(new InfoRequest(), deadline: DateTime.UtcNow.AddSeconds(30));
            Assert.Equal(5, info.EndBlock);
            // Every session the attacks opened or abandoned gives its cache back (the server closes them on its own time).
            for (var until = DateTime.UtcNow.AddSeconds(30); info.CacheTokensLeft != _cacheTokens && DateTime.UtcNow < until; await Task.Delay(100))
                info = await client.InfoAsync(new InfoRequest(), deadline: DateTime.UtcNow.AddSeconds(30));
            Assert.Equal(_cacheTokens, info.CacheTokensLeft);
            await PingAsync(channel);
        }
        using (var channel = CampaignChannels.Create(DhtAddress)) await PingAsync(channel);
        using var models = await Http.GetAsync("/v1/models");
        Assert.Equal(HttpStatusCode.OK, models.StatusCode);
    }

    static async Task PingAsync(GrpcChannel channel)
    {
        var reply = await new DhtService.DhtServiceClient(channel).PingAsync(
            new PingRequest { Nonce = ByteString.CopyFrom(RandomNumberGenerator.GetBytes(16)) }, deadline: DateTime.UtcNow.AddSeconds(30));
        Assert.Equal(20, reply.Responder.NodeId.Length);
    }
}
