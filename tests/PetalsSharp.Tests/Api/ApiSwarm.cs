using PetalsSharp.Api.Chat;
using PetalsSharp.Client;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Text.Tokenizers;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using Xunit;

namespace PetalsSharp.Tests.Api;

/// <summary>
/// A tiny random-weight Llama with a real (GPT-2, truncated) tokenizer, written to a temp folder, served by two
/// <c>petals server</c> processes ([0:1] and [1:2]); plus the same model loaded locally. Text is gibberish but
/// deterministic, which is all the API tests need: they compare paths against each other, not against prose.
/// </summary>
public sealed class ApiSwarm : IAsyncLifetime
{
    public string ModelDir { get; } = Path.Combine(Path.GetTempPath(), "petals-api-" + Guid.NewGuid().ToString("N"), "tiny-chat");
    public string ModelId => "tiny-chat";
    public ServerProcess[] Servers { get; private set; } = [];
    public IEnumerable<string> Peers => Servers.Select(s => s.Address);
    public CausalLM Remote { get; private set; } = null!;
    public CausalLM Local { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        var config = new LlamaConfig
        {
            ModelType = "llama", VocabSize = 1000, HiddenSize = 32, NumLayers = 2, NumHeads = 4, NumKvHeads = 2, HeadDim = 8,
            IntermediateSize = 64, MaxPositionEmbeddings = 512, RmsNormEps = 1e-5, BosTokenId = 999, EosTokenIds = [999],
        };
        RandomCheckpoint.Write(config, ModelDir, seed: 11);
        Gpt2TokenizerFiles.Write(ModelDir, config.VocabSize);
        Servers = await Task.WhenAll(ServerProcess.StartAsync(ModelDir, 0, 1), ServerProcess.StartAsync(ModelDir, 1, 2));
        Remote = await DistributedModel.ConnectAsync(ModelDir, Peers);
        Local = CausalLM.Load(ModelDir);
    }

    public PetalsChatClient RemoteChat() => new(Remote, ModelId);
    public PetalsChatClient LocalChat() => new(Local, ModelId);

    /// <summary>Each server's free KV-cache, in tokens, as its Info reply says.</summary>
    public async Task<long[]> CacheTokensLeftAsync()
    {
        var left = new long[Servers.Length];
        for (int i = 0; i < Servers.Length; i++)
        {
            using var channel = PeerChannels.Create(Servers[i].Address, new PeerChannelOptions(Protocol.DefaultMaxMessageBytes));
            left[i] = (await new BlockService.BlockServiceClient(channel).InfoAsync(new InfoRequest())).CacheTokensLeft;
        }
        return left;
    }

    public Task DisposeAsync()
    {
        Remote?.Dispose();
        Local?.Dispose();
        foreach (var s in Servers) s.Dispose();
        try { Directory.Delete(Path.GetDirectoryName(ModelDir)!, recursive: true); }
        catch (IOException) { /* a server still closing its mapped file; the temp folder is cleaned later */ }
        return Task.CompletedTask;
    }
}

[CollectionDefinition(Name)]
public sealed class ApiSwarmCollection : ICollectionFixture<ApiSwarm>
{
    public const string Name = "api swarm";
}
