using System.Net;
using Grpc.Core;
using PetalsSharp.Server;
using PetalsSharp.Tests.Cli;
using PetalsSharp.Wire.V1;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Server;

/// <summary>
/// Issue 23, attack 5: one client must not hold a server's whole KV cache for ever. Real <c>petals server</c>
/// processes with default flags (8192 tokens of cache, <c>--max-cache-share 0.5</c>); a second client connects from
/// 127.0.0.2 so that the server sees a different peer address.
/// </summary>
[Trait("Category", "Processes")]
public sealed class CacheShareTests
{
    static readonly string Model = TestData.Path("llama-gqa");

    [Fact]
    public async Task One_client_gets_at_most_its_share_of_the_cache_and_another_client_still_gets_room()
    {
        using var server = await ServerProcess.StartAsync(Model, 0, 3);
        using var greedy = new ServerClient(server.Address);
        using var other = new ServerClient(server.Address, IPAddress.Parse("127.0.0.2"));
        Assert.Equal(8192, (await greedy.Raw.InfoAsync(new InfoRequest())).CacheTokensLeft);

        // The whole cache in one session: the batch 16 × 512, here 32 × 256 (this model has 256 positions).
        var all = await Assert.ThrowsAsync<RpcException>(() => greedy.OpenAsync(ServerClient.Open(32, 256, id: "all")));
        AssertShareRefusal(all);

        using var half = await greedy.OpenAsync(ServerClient.Open(16, 256, id: "half"));
        Assert.Equal(4096, half.Opened.CacheTokensLeft);
        AssertShareRefusal(await Assert.ThrowsAsync<RpcException>(() => greedy.OpenAsync(ServerClient.Open(1, 1, id: "one-more"))));
        // A new connection from the same address is the same client.
        using (var again = new ServerClient(server.Address))
            AssertShareRefusal(await Assert.ThrowsAsync<RpcException>(() => again.OpenAsync(ServerClient.Open(1, 1, id: "new-conn"))));

        using var fair = await other.OpenAsync(ServerClient.Open(16, 256, id: "fair"));
        Assert.Equal(0, fair.Opened.CacheTokensLeft);
        var (_, position) = await fair.StepAsync(randn(16, 3, 64));
        Assert.Equal(3, position);

        // The share is held, not spent: it comes back when the session ends.
        await half.CloseAsync();
        await WaitForCacheLeftAsync(greedy, 4096);
        using var back = await greedy.OpenAsync(ServerClient.Open(16, 256, id: "back"));
        Assert.Equal(0, back.Opened.CacheTokensLeft);
    }

    [Theory]
    [InlineData("0")]
    [InlineData("1.5")]
    [InlineData("NaN")]
    public async Task A_share_outside_0_to_1_is_one_line_on_stderr_and_a_non_zero_exit(string share)
    {
        var r = await CliRunner.RunAsync("server", "--model", Model, "--blocks", "0:3", "--port", "0", "--max-cache-share", share);
        Assert.NotEqual(0, r.ExitCode);
        var line = Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains("--max-cache-share must be in (0, 1]", line);
    }

    static void AssertShareRefusal(RpcException e)
    {
        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
        Assert.Contains("max_cache_share 0.5", e.Status.Detail);
        Assert.Contains("127.0.0.1", e.Status.Detail);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_session_kept_alive_only_by_steps_without_new_tokens_is_closed_after_the_idle_timeout(bool replay)
    {
        using var server = await ServerProcess.StartAsync(Model, 0, 3, "--session-idle-timeout", "8");
        using var client = new ServerClient(server.Address);
        using var session = await client.OpenAsync(ServerClient.Open(1, 40, id: "lingering"));
        Assert.Equal(8192 - 48, session.Opened.CacheTokensLeft);   // max_length 40 is promised as three 16-token pages
        var real = InferenceStream.Step("real", randn(1, 2, 64));
        Assert.Equal(2, (await session.SendAsync(real)).Position);

        // A zero-token step (or the same step again, answered from memory) every 0.25 s: neither is work, so
        // neither may keep the session's cache. Far past the 8 s timeout (generous: the machine may be loaded, and
        // the honest step above must not time out), the session must have ended.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(90);
        Status? ended = null;
        for (int i = 0; ended is null && DateTime.UtcNow < deadline; i++)
        {
            try { await session.SendAsync(replay ? real : InferenceStream.Step($"empty-{i}", zeros(1, 0, 64))); }
            catch (Exception e) when (e is RpcException or InvalidOperationException) { ended = await FinalStatusAsync(session); }
            await Task.Delay(250);
        }
        Assert.True(ended is not null, "the session was still open 90 s after its last step with tokens");
        Assert.Equal(StatusCode.DeadlineExceeded, ended.Value.StatusCode);
        Assert.Contains("idle", ended.Value.Detail);
        await WaitForCacheLeftAsync(client, 8192);
    }

    static async Task WaitForCacheLeftAsync(ServerClient client, long expected)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        long left;
        while ((left = (await client.Raw.InfoAsync(new InfoRequest())).CacheTokensLeft) != expected && DateTime.UtcNow < deadline)
            await Task.Delay(50);
        Assert.Equal(expected, left);
    }

    static async Task<Status> FinalStatusAsync(InferenceStream session)
    {
        try
        {
            while (await session.Call.ResponseStream.MoveNext(CancellationToken.None)) { }
        }
        catch (RpcException e) { return e.Status; }
        return session.Call.GetStatus();
    }
}
