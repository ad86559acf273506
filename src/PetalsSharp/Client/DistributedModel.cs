using PetalsSharp.Models;
using PetalsSharp.Text.Tokenizers;

namespace PetalsSharp.Client;

/// <summary>
/// A <see cref="CausalLM"/> whose blocks run on servers: the client loads only the embeddings, the final norm and
/// the LM head (and the tokenizer) from the model folder. Generation, inspection and training are the local
/// model's API.
/// </summary>
public static class DistributedModel
{
    /// <summary>Opens <paramref name="modelDir"/>'s client-side parts and connects to <paramref name="peers"/>.</summary>
    public static Task<CausalLM> ConnectAsync(string modelDir, IEnumerable<string> peers, RemoteOptions? options = null,
        ModelLoadOptions? load = null, CancellationToken cancellationToken = default) =>
        OpenAsync(modelDir, load, c => RemoteSequential.ConnectAsync(c.Config, peers, options, c, cancellationToken));

    /// <summary>
    /// Opens <paramref name="modelDir"/>'s client-side parts and finds its servers through the DHT reached at
    /// <paramref name="initialPeers"/>. The DHT prefix is the folder's name (as servers derive it) unless given.
    /// </summary>
    public static Task<CausalLM> ConnectViaDhtAsync(string modelDir, IEnumerable<string> initialPeers, RemoteOptions? options = null,
        ModelLoadOptions? load = null, string? dhtPrefix = null, CancellationToken cancellationToken = default) =>
        OpenAsync(modelDir, load, c => RemoteSequential.ConnectViaDhtAsync(c.Config,
            dhtPrefix ?? Swarm.ModelNames.DhtPrefix(Swarm.ModelNames.FromFolder(modelDir)), initialPeers, options, c, cancellationToken));

    static async Task<CausalLM> OpenAsync(string modelDir, ModelLoadOptions? load, Func<Checkpoint, Task<RemoteSequential>> connect)
    {
        load ??= new ModelLoadOptions();
        var checkpoint = Checkpoint.Open(modelDir);
        try
        {
            var remote = await connect(checkpoint).ConfigureAwait(false);
            var ends = checkpoint.LoadEnds(load.WeightDtype, load.Device, load.EndsQuant);
            return new CausalLM(checkpoint.Config, ends, remote, TokenizerLoader.TryLoad(modelDir));
        }
        finally
        {
            checkpoint.Dispose();
        }
    }
}
