using PetalsSharp.Hub;
using PetalsSharp.Models;
using PetalsSharp.Text.Templates;
using Xunit;

namespace PetalsSharp.Tests.Hub;

/// <summary>Downloads from a real HTTP fake hub on 127.0.0.1 into a temporary HF cache.</summary>
public sealed class HubResolverTests : IAsyncLifetime
{
    readonly string _root = Path.Combine(Path.GetTempPath(), "petals-hub-" + Guid.NewGuid().ToString("N"));
    FakeHub _hub = null!;
    string _commit = "";
    (string Embed, string[] Blocks, string Head) _shards;

    string Cache => Path.Combine(_root, "cache");
    static readonly HubModelId Sharded = new("acme/llama-gqa-sharded");
    static readonly HubModelId Single = new("acme/llama-gqa");

    public async Task InitializeAsync()
    {
        _hub = await FakeHub.StartAsync();
        _shards = HubRepos.Sharded(Path.Combine(_root, "sharded"));
        _commit = _hub.Publish(Sharded.Repo, Path.Combine(_root, "sharded"));
        _hub.Publish(Single.Repo, HubRepos.SingleFile(Path.Combine(_root, "single")));
    }

    public async Task DisposeAsync()
    {
        await _hub.DisposeAsync();
        Directory.Delete(_root, recursive: true);
    }

    HubSettings Settings(bool offline = false, string? token = null) =>
        new() { Endpoint = _hub.Endpoint, CacheDir = Cache, Offline = offline, Token = token };

    async Task<ResolvedModel> Resolve(HubModelId id, WeightSelection weights, HubSettings? settings = null, List<string>? notices = null)
    {
        using var resolver = new HubModelResolver(settings ?? Settings()) { OnNotice = notices is null ? null : notices.Add };
        return await resolver.ResolveAsync(id, weights);
    }

    string[] CdnFiles() => _hub.Downloads.Where(r => r.Path.StartsWith("/cdn/")).Select(r => r.Path.Split('/')[^1]).Distinct().Order().ToArray();

    static string[] Present(string dir) => Directory.GetFiles(dir).Select(Path.GetFileName).Order().ToArray()!;

    [Fact]
    public async Task ServerOfOneBlockDownloadsOnlyThatBlocksShard()
    {
        var resolved = await Resolve(Sharded, WeightSelection.Blocks(1, 2));
        Assert.Equal("llama-gqa-sharded", resolved.Name);
        Assert.Equal([_shards.Blocks[1]], CdnFiles());
        Assert.Equal(new[] { "config.json", "generation_config.json", _shards.Blocks[1], "model.safetensors.index.json", "tokenizer_config.json" }.Order(),
            Present(resolved.Directory));

        using var checkpoint = Checkpoint.Open(resolved.Directory);
        using var block = checkpoint.LoadBlock(1);
        Assert.Throws<PetalsSharp.Models.Weights.CheckpointException>(() => checkpoint.LoadBlock(0));   // its shard was not fetched
        Assert.NotNull(ChatTemplate.TryLoad(resolved.Directory));
    }

    [Fact]
    public async Task ClientDownloadsOnlyTheEndsShards()
    {
        var resolved = await Resolve(Sharded, WeightSelection.ClientEnds);
        Assert.Equal(new[] { _shards.Embed, _shards.Head }.Order(), CdnFiles());
        using var checkpoint = Checkpoint.Open(resolved.Directory);
        using var ends = checkpoint.LoadEnds();
    }

    [Fact]
    public async Task SingleFileRepoDownloadsTheFileAndLoads()
    {
        var resolved = await Resolve(Single, WeightSelection.ClientEnds);
        Assert.Equal(["model.safetensors"], CdnFiles());
        using var lm = CausalLM.Load(resolved.Directory, new ModelLoadOptions());
        Assert.Equal(3, lm.Config.NumLayers);
    }

    [Fact]
    public async Task CacheHasThePythonLayoutAndIsReusedWithoutDownloadsOrWithoutTheHub()
    {
        var first = await Resolve(Sharded, WeightSelection.Blocks(0, 1));
        string repoDir = Path.Combine(Cache, "models--acme--llama-gqa-sharded");
        Assert.Equal(Path.Combine(repoDir, "snapshots", _commit), first.Directory);
        Assert.Equal(_commit, File.ReadAllText(Path.Combine(repoDir, "refs", "main")));
        var config = new FileInfo(Path.Combine(first.Directory, "config.json"));
        string configEtag = FakeHub.GitSha1(File.ReadAllBytes(Path.Combine(HubRepos.FixtureDir, "config.json")));
        Assert.Equal(Path.Combine("..", "..", "blobs", configEtag), config.LinkTarget);
        var shard = new FileInfo(Path.Combine(first.Directory, _shards.Blocks[0]));
        string shardSha = FakeHub.Sha256(File.ReadAllBytes(Path.Combine(_root, "sharded", _shards.Blocks[0])));
        Assert.Equal(Path.Combine("..", "..", "blobs", shardSha), shard.LinkTarget);
        Assert.True(File.Exists(Path.Combine(repoDir, "blobs", shardSha)));
        Assert.True(File.Exists(Path.Combine(repoDir, ".no_exist", _commit, "tokenizer.json")));   // optional and absent
        Assert.Empty(Directory.GetFiles(Path.Combine(repoDir, "blobs"), "*.incomplete"));

        int downloads = _hub.Downloads.Count();
        var second = await Resolve(Sharded, WeightSelection.Blocks(0, 1));
        Assert.Equal(first.Directory, second.Directory);
        Assert.Equal(downloads, _hub.Downloads.Count());   // HEADs only

        await _hub.DisposeAsync();   // the hub goes away: the cached snapshot still resolves
        var notices = new List<string>();
        var third = await Resolve(Sharded, WeightSelection.Blocks(0, 1), notices: notices);
        Assert.Equal(first.Directory, third.Directory);
        Assert.Contains(notices, n => n.Contains("unreachable"));
        _hub = await FakeHub.StartAsync();   // for DisposeAsync
    }

    [Fact]
    public async Task OfflineModeReadsOnlyTheCacheAndSaysWhatIsMissing()
    {
        var missing = await Assert.ThrowsAsync<HubException>(() => Resolve(Sharded, WeightSelection.All, Settings(offline: true)));
        Assert.Contains("HF_HUB_OFFLINE", missing.Message);
        Assert.Contains("acme/llama-gqa-sharded", missing.Message);
        Assert.Empty(_hub.Requests);

        await Resolve(Sharded, WeightSelection.Blocks(2, 3));
        int requests = _hub.Requests.Count;
        var offline = await Resolve(Sharded, WeightSelection.Blocks(2, 3), Settings(offline: true));
        Assert.Equal(Path.Combine(Cache, "models--acme--llama-gqa-sharded", "snapshots", _commit), offline.Directory);
        var lacking = await Assert.ThrowsAsync<HubException>(() => Resolve(Sharded, WeightSelection.Blocks(0, 2), Settings(offline: true)));
        Assert.Contains(_shards.Blocks[0], lacking.Message);
        Assert.Contains(_shards.Blocks[1], lacking.Message);
        Assert.DoesNotContain(_shards.Blocks[2], lacking.Message);
        Assert.Equal(requests, _hub.Requests.Count);
    }

    [Fact]
    public async Task DroppedConnectionIsResumedWithARangeRequest()
    {
        _hub.DropOnce[_shards.Head] = true;
        var notices = new List<string>();
        var resolved = await Resolve(Sharded, WeightSelection.ClientEnds, notices: notices);
        var gets = _hub.Downloads.Where(r => r.Path.EndsWith("/" + _shards.Head)).ToList();
        Assert.Equal(2, gets.Count);
        Assert.Null(gets[0].Range);
        long size = new FileInfo(Path.Combine(_root, "sharded", _shards.Head)).Length;
        Assert.Equal($"bytes={size / 2}-", gets[1].Range);
        Assert.Contains(notices, n => n.Contains("resuming"));
        Assert.Equal(File.ReadAllBytes(Path.Combine(_root, "sharded", _shards.Head)), File.ReadAllBytes(Path.Combine(resolved.Directory, _shards.Head)));
    }

    [Fact]
    public async Task CorruptDownloadIsDeletedAndReported()
    {
        _hub.Corrupt[_shards.Embed] = true;
        var e = await Assert.ThrowsAsync<HubException>(() => Resolve(Sharded, WeightSelection.ClientEnds));
        Assert.Contains("corrupt", e.Message);
        Assert.Contains(_shards.Embed, e.Message);
        Assert.Contains("sha256", e.Message);
        string blobs = Path.Combine(Cache, "models--acme--llama-gqa-sharded", "blobs");
        Assert.DoesNotContain(Directory.GetFiles(blobs), f => f.EndsWith(".incomplete") || f.EndsWith(FakeHub.Sha256(File.ReadAllBytes(Path.Combine(_root, "sharded", _shards.Embed)))));

        _hub.Corrupt.Clear();   // the next run starts over and succeeds
        await Resolve(Sharded, WeightSelection.ClientEnds);
    }

    [Fact]
    public async Task TokenGoesToTheHubButNotToTheCdnAndErrorsAreClear()
    {
        await Resolve(Single, WeightSelection.All, Settings(token: "hf_secret"));
        Assert.All(_hub.Requests.Where(r => r.Path.Contains("/resolve/")), r => Assert.Equal("Bearer hf_secret", r.Authorization));
        Assert.All(_hub.Requests.Where(r => r.Path.StartsWith("/cdn/")), r => Assert.Null(r.Authorization));

        var repo = await Assert.ThrowsAsync<HubException>(() => Resolve(new HubModelId("acme/nope"), WeightSelection.All));
        Assert.Contains("acme/nope was not found", repo.Message);
        var revision = await Assert.ThrowsAsync<HubException>(() => Resolve(new HubModelId(Single.Repo, "v9"), WeightSelection.All));
        Assert.Contains("revision 'v9'", revision.Message);
        var blocks = await Assert.ThrowsAsync<HubException>(() => Resolve(Sharded, WeightSelection.Blocks(2, 4)));
        Assert.Contains("outside the model's 3 blocks", blocks.Message);
    }

    [Fact]
    public async Task ACommitRevisionResolvesToItsSnapshot()
    {
        var resolved = await Resolve(Sharded with { Revision = _commit }, WeightSelection.None);
        Assert.EndsWith(_commit, resolved.Directory);
        Assert.False(Directory.Exists(Path.Combine(Cache, "models--acme--llama-gqa-sharded", "refs")));
        var offline = await Resolve(Sharded with { Revision = _commit }, WeightSelection.None, Settings(offline: true));
        Assert.Equal(resolved.Directory, offline.Directory);
    }

    [Fact]
    public async Task RelativeRedirectOfARenamedRepoIsFollowed()
    {
        _hub.Renamed["acme/old-name"] = Single.Repo;
        var resolved = await Resolve(new HubModelId("acme/old-name"), WeightSelection.All);
        Assert.Equal("old-name", resolved.Name);
        Assert.True(File.Exists(Path.Combine(resolved.Directory, "model.safetensors")));
        Assert.Contains(_hub.Requests, r => r.Path.StartsWith("/acme/old-name/resolve/"));
    }

    [Theory]
    [InlineData("meta-llama/Llama-2-7b-chat-hf", "meta-llama/Llama-2-7b-chat-hf", "main")]
    [InlineData("org/name@v1.0", "org/name", "v1.0")]
    [InlineData("org/name@refs/pr/1", "org/name", "refs/pr/1")]
    [InlineData("./models/x", null, null)]
    [InlineData("../a/b", null, null)]
    [InlineData("/abs/path", null, null)]
    [InlineData("a/b/c", null, null)]
    [InlineData("just-a-folder", null, null)]
    public void ModelIdsAreTellableFromPaths(string text, string? repo, string? revision)
    {
        bool ok = HubModelId.TryParse(text, out var id);
        Assert.Equal(repo is not null, ok);
        if (ok)
        {
            Assert.Equal(repo, id.Repo);
            Assert.Equal(revision, id.Revision);
        }
    }

    [Fact]
    public void SettingsComeFromTheHuggingFaceEnvironmentVariables()
    {
        var s = HubSettings.FromEnvironment(new Dictionary<string, string?>
        {
            ["HF_ENDPOINT"] = "http://127.0.0.1:9/", ["HF_TOKEN"] = "hf_x", ["HF_HUB_OFFLINE"] = "1", ["HF_HOME"] = "/tmp/hfhome",
        });
        Assert.Equal("http://127.0.0.1:9", s.Endpoint);
        Assert.Equal("hf_x", s.Token);
        Assert.True(s.Offline);
        Assert.Equal("/tmp/hfhome/hub", s.CacheDir);
        Assert.Equal("/tmp/c", HubSettings.FromEnvironment(new Dictionary<string, string?> { ["HF_HUB_CACHE"] = "/tmp/c", ["HF_HOME"] = "/x" }).CacheDir);
        Assert.False(HubSettings.FromEnvironment(new Dictionary<string, string?> { ["HF_HOME"] = "/nonexistent" }).Offline);
    }
}
