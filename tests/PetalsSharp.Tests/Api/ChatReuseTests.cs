using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.AI;
using PetalsSharp.Api.Chat;
using PetalsSharp.Api.OpenAi;
using PetalsSharp.Client;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Text.Tokenizers;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using Xunit;

namespace PetalsSharp.Tests.Api;

/// <summary>
/// Chat sessions that keep their cache between turns: the second turn of a chat sends only its new tokens, reports
/// them as <c>cached_tokens</c>, and says what a fresh session says; when the kept session's server dies between turns,
/// the turn still succeeds on the other server. Speculative decoding through the API changes nothing in greedy text.
/// </summary>
[Trait("Category", "Processes")]
public sealed class ChatReuseTests
{
    /// <summary>A tiny random Llama with a GPT-2 tokenizer, in a temp folder.</summary>
    static string WriteModel()
    {
        var dir = Path.Combine(Path.GetTempPath(), "petals-reuse-" + Guid.NewGuid().ToString("N"), "tiny-chat");
        var config = new LlamaConfig
        {
            ModelType = "llama", VocabSize = 1000, HiddenSize = 32, NumLayers = 2, NumHeads = 4, NumKvHeads = 2, HeadDim = 8,
            IntermediateSize = 64, MaxPositionEmbeddings = 512, RmsNormEps = 1e-5, BosTokenId = 999, EosTokenIds = [999],
        };
        RandomCheckpoint.Write(config, dir, seed: 23);
        Gpt2TokenizerFiles.Write(dir, config.VocabSize);
        return dir;
    }

    static readonly ChatMessage[] FirstTurn = [new(ChatRole.User, "Tell me about the sea.")];

    static ChatMessage[] SecondTurn(string reply) => [.. FirstTurn, new(ChatRole.Assistant, reply), new(ChatRole.User, "And the mountains?")];

    static readonly ChatOptions Greedy = new() { Temperature = 0, MaxOutputTokens = 12 };

    [Fact]
    public async Task The_chat_client_reuses_the_first_turn_and_says_what_a_fresh_session_says()
    {
        var dir = WriteModel();
        using var lm = CausalLM.Load(dir);
        var fresh = new PetalsChatClient(lm, "tiny-chat");
        var kept = new PetalsChatClient(lm, "tiny-chat");
        await using var sessions = new ChatSessionCache(lm);
        kept.Engine.Sessions = sessions;

        var first = await kept.GetResponseAsync(FirstTurn, Greedy);
        Assert.Equal((await fresh.GetResponseAsync(FirstTurn, Greedy)).Text, first.Text);
        Assert.Equal(0, first.Usage!.CachedInputTokenCount);
        Assert.Equal(1, sessions.Count);

        var second = await kept.GetResponseAsync(SecondTurn(first.Text), Greedy);
        var expected = await fresh.GetResponseAsync(SecondTurn(first.Text), Greedy);
        Assert.Equal(expected.Text, second.Text);
        Assert.True(second.Usage!.CachedInputTokenCount > 0, "the second turn should reuse the first turn's cache");

        // Streaming reuses too, and speculative decoding (prompt lookup) leaves greedy text as it is.
        var options = Greedy.Clone();
        (options.AdditionalProperties ??= [])[PetalsKeys.Speculative] = "prompt-lookup";
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in kept.GetStreamingResponseAsync(SecondTurn(first.Text), options)) updates.Add(u);
        Assert.Equal(expected.Text, string.Concat(updates.Select(u => u.Text)));
        var usage = updates.SelectMany(u => u.Contents).OfType<UsageContent>().Single().Details;
        Assert.True(usage.CachedInputTokenCount > 0);
        try { Directory.Delete(Path.GetDirectoryName(dir)!, recursive: true); } catch (IOException) { }
    }

    [Fact]
    public async Task Through_the_api_the_second_turn_reports_cached_tokens_and_survives_its_server_dying()
    {
        var dir = WriteModel();
        // Two servers with every block: the chat's kept session lives on one of them.
        var servers = await Task.WhenAll(ServerProcess.StartAsync(dir, 0, 2), ServerProcess.StartAsync(dir, 0, 2));
        try
        {
            // No activation checks: a check's shadow session would hold cache on the other server too, and the test
            // tells the holder by its cache.
            using var remote = await DistributedModel.ConnectAsync(dir, servers.Select(s => s.Address), new RemoteOptions { VerifyRate = 0 });
            var chat = new PetalsChatClient(remote, "tiny-chat");
            await using var sessions = new ChatSessionCache(remote);
            chat.Engine.Sessions = sessions;
            await using var app = OpenAiServer.Build(chat, "127.0.0.1", 0);
            await app.StartAsync();
            using var http = new HttpClient { BaseAddress = new Uri(OpenAiServer.Url(app)), Timeout = TimeSpan.FromMinutes(2) };

            async Task<(string Text, int Cached)> TurnAsync(ChatMessage[] messages)
            {
                var body = JsonSerializer.Serialize(new
                {
                    model = "tiny-chat", temperature = 0, max_tokens = 12,
                    messages = messages.Select(m => new { role = m.Role.Value, content = m.Text }),
                });
                using var res = await http.PostAsync("/v1/chat/completions", new StringContent(body, Encoding.UTF8, "application/json"));
                var json = await res.Content.ReadFromJsonAsync<JsonElement>();
                Assert.True(res.IsSuccessStatusCode, json.ToString());
                return (json.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()!,
                    json.GetProperty("usage").GetProperty("prompt_tokens_details").GetProperty("cached_tokens").GetInt32());
            }

            var (reply, cached) = await TurnAsync(FirstTurn);
            Assert.Equal(0, cached);
            var (again, cachedAgain) = await TurnAsync(SecondTurn(reply));
            Assert.True(cachedAgain > 0, "the second turn should reuse the first turn's cache");
            // Only the kept session is open now, so the server holding it has promised more of its cache.
            var left = await Task.WhenAll(servers.Select(CacheLeftAsync));
            Assert.NotEqual(left[0], left[1]);
            int holder = left[0] < left[1] ? 0 : 1;

            var fresh = new PetalsChatClient(remote, "tiny-chat");
            Assert.Equal((await fresh.GetResponseAsync(SecondTurn(reply), Greedy)).Text, again);

            // Kill the server that holds the chat's kept session, then take a third turn.
            servers[holder].Kill();
            ChatMessage[] third = [.. SecondTurn(reply), new(ChatRole.Assistant, again), new(ChatRole.User, "Thanks!")];
            var (last, _) = await TurnAsync(third);
            Assert.Equal((await fresh.GetResponseAsync(third, Greedy)).Text, last);
        }
        finally
        {
            foreach (var s in servers) s.Dispose();
            try { Directory.Delete(Path.GetDirectoryName(dir)!, recursive: true); } catch (IOException) { }
        }
    }

    static async Task<long> CacheLeftAsync(ServerProcess server)
    {
        using var channel = PeerChannels.Create(server.Address, new PeerChannelOptions(Protocol.DefaultMaxMessageBytes));
        return (await new BlockService.BlockServiceClient(channel).InfoAsync(new InfoRequest())).CacheTokensLeft;
    }
}
