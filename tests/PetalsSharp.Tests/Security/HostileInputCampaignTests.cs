using System.Diagnostics;
using System.Security.Cryptography;
using Google.Protobuf;
using PetalsSharp.Dht;
using PetalsSharp.Dht.V1;
using Xunit;
using Xunit.Abstractions;

namespace PetalsSharp.Tests.Security;

/// <summary>
/// Issue 19, acceptance 4: hundreds of enumerated malformed or hostile inputs against the block service, the DHT
/// service and the HTTP API of real processes. Each must get a clear status (a gRPC code other than INTERNAL or
/// UNKNOWN with a message, a DHT store refusal with its reason, or an OpenAI error object with a 4xx), no process
/// may die, and honest users running alongside must get exactly the reference output.
/// </summary>
[Trait("Category", "Processes")]
public sealed class HostileInputCampaignTests(CampaignSwarm swarm, ITestOutputHelper output) : IClassFixture<CampaignSwarm>
{
    /// <summary>Every category the acceptance names, with the service it must be tried on.</summary>
    static readonly (string Service, string Category)[] Required =
    [
        ("block service (gRPC)", "truncated message"), ("block service (gRPC)", "oversized message"), ("block service (gRPC)", "wrong dtype"),
        ("block service (gRPC)", "wrong shape or rank"), ("block service (gRPC)", "NaN or Inf"), ("block service (gRPC)", "unknown session id"),
        ("block service (gRPC)", "stolen session id"), ("block service (gRPC)", "replayed push"), ("block service (gRPC)", "slow-loris stream"),
        ("block service (gRPC)", "invalid UTF-8"), ("DHT service (gRPC)", "forged DHT record"), ("DHT service (gRPC)", "expired record"),
        ("DHT service (gRPC)", "far-future expiration"), ("DHT service (gRPC)", "slow-loris stream"), ("DHT service (gRPC)", "invalid UTF-8"),
        ("HTTP API", "malformed JSON"), ("HTTP API", "huge max_tokens or n"), ("HTTP API", "invalid UTF-8"), ("HTTP API", "truncated message"),
    ];

    static IEnumerable<HostileCase> BlockCases(BlockTarget b) =>
        BlockTensorCases.All(b).Concat(BlockStreamCases.All(b)).Concat(BlockSessionCases.All(b));

    [Fact]
    public async Task Block_service_inputs_each_get_a_clear_status_while_a_client_generates_through_the_server()
    {
        using var target = new BlockTarget(swarm);
        await CampaignAsync(BlockCases(target).ToList(), swarm.HealthyGenerationAsync);
    }

    [Fact]
    public async Task Dht_inputs_each_get_a_clear_status_while_a_client_generates_through_the_server()
    {
        using var target = new DhtTarget(swarm);
        await CampaignAsync(target.All().ToList(), swarm.HealthyGenerationAsync);
        // Honest DHT use still works on both nodes: a signed record is stored and read back.
        using var owner = NodeIdentity.CreateEphemeral();
        var entry = DhtRecords.Sign(owner, $"campaign.honest.{Guid.NewGuid():N}", "after the campaign"u8, DateTimeOffset.UtcNow.AddMinutes(5));
        foreach (var address in new[] { swarm.DhtAddress, swarm.Server.Address })
        {
            using var channel = CampaignChannels.Create(address);
            var client = new DhtService.DhtServiceClient(channel);
            var stored = await client.StoreAsync(new StoreRequest { Nonce = Nonce(), Records = { new PetalsSharp.Dht.V1.Record { Key = entry.Key, Entry = entry.ToWire() } } });
            Assert.True(stored.Statuses[0].Accepted, stored.Statuses[0].Reason);
            var found = await client.FindValueAsync(new FindValueRequest { Nonce = Nonce(), Key = entry.Key });
            Assert.Equal("after the campaign", Assert.Single(found.Entries).Value.ToStringUtf8());
        }
    }

    [Fact]
    public async Task Relay_inputs_each_get_a_clear_status_while_a_client_generates_through_the_server()
    {
        using var target = new RelayTarget(swarm);
        await CampaignAsync(target.All().ToList(), swarm.HealthyGenerationAsync);
    }

    [Fact]
    public async Task Api_inputs_each_get_a_clear_status_while_a_client_completes_greedily() =>
        await CampaignAsync(ApiCases.All(swarm).ToList(), swarm.HealthyCompletionsAsync);

    [Fact]
    public void The_campaign_enumerates_at_least_200_distinct_inputs_in_every_required_category()
    {
        using var block = new BlockTarget(swarm);
        using var dht = new DhtTarget(swarm);
        var all = BlockCases(block).Concat(dht.All()).Concat(ApiCases.All(swarm)).ToList();
        output.WriteLine(Campaign.CountTable(all));
        var duplicates = all.GroupBy(c => c.Id).Where(g => g.Count() > 1).Select(g => g.Key).ToList();
        Assert.True(duplicates.Count == 0, $"cases named twice: {string.Join("; ", duplicates)}");
        Assert.True(all.Count >= 200, $"only {all.Count} cases");
        var missing = Required.Where(r => !all.Any(c => c.Service == r.Service && c.Category == r.Category)).ToList();
        Assert.True(missing.Count == 0, $"no case for: {string.Join("; ", missing)}");
    }

    /// <summary>
    /// Runs the cases (a few at a time) while <paramref name="healthyRound"/> repeats until they are done, then
    /// checks every outcome, the healthy rounds, and that every process still runs and answers.
    /// </summary>
    async Task CampaignAsync(List<HostileCase> cases, Func<Task<int>> healthyRound)
    {
        var clock = Stopwatch.StartNew();
        var attacks = Campaign.RunAsync(cases, parallel: 4);
        int rounds = 0, tokens = 0, roundsDuring = 0;
        List<(HostileCase Case, Outcome Outcome)> results;
        try
        {
            do
            {
                if (!attacks.IsCompleted) roundsDuring++;
                tokens += await healthyRound();
                rounds++;
            }
            while (!attacks.IsCompleted);
        }
        finally
        {
            results = await attacks;
        }
        var attackTime = clock.Elapsed;
        var failures = Campaign.Report(results, output);
        output.WriteLine($"{cases.Count} cases in {attackTime.TotalSeconds:F1} s; the healthy user finished {rounds} rounds ({tokens} tokens, " +
                         $"{roundsDuring} begun while attacks were running), every token equal to the reference");
        await swarm.AssertAliveAndAnsweringAsync();
        Assert.True(failures.Count == 0, $"{failures.Count} of {cases.Count} inputs got no clear status:\n{string.Join("\n", failures)}");
        var serverErrors = swarm.Server.Log.Split('\n').Where(l => l.Contains("fail:", StringComparison.Ordinal) || l.Contains("crit:", StringComparison.Ordinal)).ToList();
        Assert.True(serverErrors.Count == 0, $"the server logged {serverErrors.Count} errors, e.g. {serverErrors.FirstOrDefault()}");
    }

    static ByteString Nonce() => ByteString.CopyFrom(RandomNumberGenerator.GetBytes(16));
}
