using Microsoft.Extensions.AI;
using PetalsSharp.Api.Chat;
using PetalsSharp.Generation;
using PetalsSharp.Swarm;
using Xunit;

namespace PetalsSharp.Tests.Api;

/// <summary><see cref="PetalsChatClient"/> and <see cref="PetalsEmbeddingGenerator"/> over a real two-server swarm and the local model.</summary>
[Trait("Category", "Processes")]
[Collection(ApiSwarmCollection.Name)]
public sealed class ChatClientTests(ApiSwarm swarm)
{
    static readonly ChatMessage[] Conversation =
    [
        new(ChatRole.System, "You are terse."),
        new(ChatRole.User, "Tell me a story about a cat"),
    ];

    static ChatOptions Greedy(int max = 12) => new() { Temperature = 0, MaxOutputTokens = max };

    [Fact]
    public async Task Distributed_client_streams_the_same_text_it_returns_under_greedy()
    {
        using var chat = swarm.RemoteChat();
        var response = await chat.GetResponseAsync(Conversation, Greedy());
        Assert.NotEmpty(response.Text);
        Assert.Equal(swarm.ModelId, response.ModelId);
        Assert.Equal(ChatRole.Assistant, response.Messages.Single().Role);
        Assert.NotNull(response.Usage);
        Assert.Equal(chat.Prepare(Conversation, Greedy()).PromptIds.Count, response.Usage!.InputTokenCount);
        Assert.Equal(response.FinishReason == ChatFinishReason.Length ? 12 : response.Usage.OutputTokenCount, response.Usage.OutputTokenCount);
        Assert.Equal(response.Usage.InputTokenCount + response.Usage.OutputTokenCount, response.Usage.TotalTokenCount);

        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in chat.GetStreamingResponseAsync(Conversation, Greedy())) updates.Add(u);
        Assert.True(updates.Count > 1, "a stream of one update is not a stream");
        var streamed = updates.ToChatResponse();
        Assert.Equal(response.Text, streamed.Text);
        Assert.Equal(response.FinishReason, streamed.FinishReason);
        Assert.Equal(response.Usage.OutputTokenCount, streamed.Usage!.OutputTokenCount);
        Assert.Equal(response.Usage.InputTokenCount, streamed.Usage.InputTokenCount);
        Assert.All(updates, u => Assert.Equal(swarm.ModelId, u.ModelId));
    }

    [Fact]
    public async Task Local_client_gives_what_the_swarm_gives()
    {
        using var local = swarm.LocalChat();
        using var remote = swarm.RemoteChat();
        var a = await local.GetResponseAsync(Conversation, Greedy(16));
        var b = await remote.GetResponseAsync(Conversation, Greedy(16));
        Assert.Equal(a.Text, b.Text);
        Assert.Equal(a.FinishReason, b.FinishReason);
        var streamed = await local.GetStreamingResponseAsync(Conversation, Greedy(16)).ToChatResponseAsync();
        Assert.Equal(a.Text, streamed.Text);
    }

    [Fact]
    public async Task Seeded_sampling_repeats_and_stop_sequences_cut_the_text()
    {
        using var chat = swarm.LocalChat();
        var sampled = new ChatOptions { Temperature = 0.9f, TopP = 0.95f, TopK = 50, Seed = 1234, MaxOutputTokens = 10 };
        Assert.Equal((await chat.GetResponseAsync(Conversation, sampled)).Text, (await chat.GetResponseAsync(Conversation, sampled)).Text);

        var full = (await chat.GetResponseAsync(Conversation, Greedy(20))).Text;
        Assert.True(full.Length >= 6, $"greedy text too short to cut: '{full}'");
        var stop = full.Substring(full.Length / 2, 2);
        var options = Greedy(20);
        options.StopSequences = [stop];
        var cut = await chat.GetResponseAsync(Conversation, options);
        Assert.Equal(full[..full.IndexOf(stop, StringComparison.Ordinal)], cut.Text);
        Assert.Equal(ChatFinishReason.Stop, cut.FinishReason);
        var streamed = await chat.GetStreamingResponseAsync(Conversation, options).ToChatResponseAsync();
        Assert.Equal(cut.Text, streamed.Text);
        Assert.Equal(ChatFinishReason.Stop, streamed.FinishReason);
    }

    [Fact]
    public async Task Presence_and_frequency_penalties_act_on_generated_tokens()
    {
        using var chat = swarm.LocalChat();
        async Task<IReadOnlyList<int>> Run(float? presence, float? frequency)
        {
            var r = chat.Prepare(Conversation, new ChatOptions { Temperature = 0, MaxOutputTokens = 24, PresencePenalty = presence, FrequencyPenalty = frequency });
            return (await swarm.Local.GenerateAsync([r.PromptIds], r.Options)).NewTokens[0];
        }
        var plain = await Run(null, null);
        Assert.True(plain.Distinct().Count() > 1, "greedy output is one token repeated: the test proves nothing");
        var spread = await Run(1000, null);
        Assert.Equal(spread.Count, spread.Distinct().Count());      // a huge presence penalty never repeats a token
        var stuck = await Run(null, -1000);
        Assert.Single(stuck.Distinct());                            // a huge negative one repeats the first token forever
        Assert.Equal(plain[0], stuck[0]);                           // the prompt's tokens are not counted
    }

    [Fact]
    public async Task Cancelling_a_stream_frees_the_servers_cache()
    {
        var full = await swarm.CacheTokensLeftAsync();
        using var chat = swarm.RemoteChat();
        using var cts = new CancellationTokenSource();
        int seen = 0;
        long[]? during = null;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var _ in chat.GetStreamingResponseAsync(Conversation, Greedy(400), cts.Token))
            {
                if (++seen == 2)
                {
                    during = await swarm.CacheTokensLeftAsync();
                    cts.Cancel();
                }
            }
        });
        Assert.NotNull(during);
        Assert.All(during!.Zip(full), p => Assert.True(p.First < p.Second, $"no cache held mid-stream: {p.First} of {p.Second}"));
        await WaitForAsync(async () => (await swarm.CacheTokensLeftAsync()).SequenceEqual(full));

        // Abandoning the enumeration (no token cancelled) closes the session the same way.
        await foreach (var _ in chat.GetStreamingResponseAsync(Conversation, Greedy(400))) break;
        await WaitForAsync(async () => (await swarm.CacheTokensLeftAsync()).SequenceEqual(full));
    }

    [Fact]
    public async Task Petals_knobs_report_the_route_and_restrict_servers()
    {
        using var chat = swarm.RemoteChat();
        var options = Greedy(4);
        options.AdditionalProperties = new() { [PetalsKeys.ShowRoute] = true };
        var response = await chat.GetResponseAsync(Conversation, options);
        var route = Assert.IsType<string>(response.AdditionalProperties![PetalsKeys.Route]);
        Assert.All(swarm.Peers, p => Assert.Contains(p, route));

        var blocked = Greedy(4);
        blocked.AdditionalProperties = new() { [PetalsKeys.BlockedServers] = new[] { swarm.Servers[0].Address } };
        await Assert.ThrowsAsync<SwarmException>(() => chat.GetResponseAsync(Conversation, blocked));

        var allowed = Greedy(4);
        allowed.AdditionalProperties = new() { [PetalsKeys.AllowedServers] = string.Join(",", swarm.Peers) };
        Assert.Equal((await chat.GetResponseAsync(Conversation, Greedy(4))).Text, (await chat.GetResponseAsync(Conversation, allowed)).Text);

        var adapter = Greedy(4);
        adapter.AdditionalProperties = new() { [PetalsKeys.Adapter] = "my-lora" };
        // No server holds it: routing refuses, naming the adapter (servers load adapters with --adapters).
        var missing = await Assert.ThrowsAsync<SwarmException>(() => chat.GetResponseAsync(Conversation, adapter));
        Assert.Contains("my-lora", missing.Message);
        using var local = swarm.LocalChat();
        await Assert.ThrowsAsync<NotSupportedException>(() => local.GetResponseAsync(Conversation, adapter));
        await Assert.ThrowsAsync<NotSupportedException>(() => local.GetResponseAsync(Conversation, blocked));
    }

    [Fact]
    public async Task Embeddings_mean_pool_over_real_tokens_locally_and_remotely()
    {
        using var local = new PetalsEmbeddingGenerator(swarm.Local, swarm.ModelId);
        using var remote = new PetalsEmbeddingGenerator(swarm.Remote, swarm.ModelId);
        string[] texts = ["a cat", "a much longer sentence about dogs and cats"];
        var batch = await local.GenerateAsync(texts);
        Assert.Equal(2, batch.Count);
        Assert.All(batch, e => Assert.Equal(32, e.Vector.Length));
        var alone = await local.GenerateAsync([texts[0]]);
        AssertClose(alone[0].Vector.ToArray(), batch[0].Vector.ToArray(), 1e-4f);   // the short row's padding does not count
        var distributed = await remote.GenerateAsync(texts);
        for (int i = 0; i < 2; i++) AssertClose(batch[i].Vector.ToArray(), distributed[i].Vector.ToArray(), 1e-4f);
        Assert.True(batch.Usage!.InputTokenCount > 0);
    }

    static void AssertClose(float[] expected, float[] actual, float tol)
    {
        Assert.Equal(expected.Length, actual.Length);
        var worst = expected.Zip(actual, (e, a) => Math.Abs(e - a)).Max();
        Assert.True(worst <= tol, $"max abs diff {worst} > {tol}");
    }

    static async Task WaitForAsync(Func<Task<bool>> condition, int timeoutMs = 15000)
    {
        var deadline = Environment.TickCount64 + timeoutMs;
        while (!await condition())
        {
            if (Environment.TickCount64 > deadline) Assert.Fail("condition not met within the timeout");
            await Task.Delay(50);
        }
    }
}
