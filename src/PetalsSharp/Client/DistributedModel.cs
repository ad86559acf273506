using PetalsSharp.Models;
using PetalsSharp.Text;

namespace PetalsSharp.Client;

/// <summary>
/// A <see cref="CausalLM"/> whose blocks run on servers: the client loads only the embeddings, the final norm and
/// the LM head (and the tokenizer) from the model folder. Generation, inspection and training are the local
/// model's API.
/// </summary>
public static class DistributedModel
{
    /// <summary>Opens <paramref name="modelDir"/>'s client-side parts and connects to <paramref name="peers"/>.</summary>
    public static async Task<CausalLM> ConnectAsync(string modelDir, IEnumerable<string> peers, RemoteOptions? options = null,
        ModelLoadOptions? load = null, CancellationToken cancellationToken = default)
    {
        load ??= new ModelLoadOptions();
        var checkpoint = Checkpoint.Open(modelDir);
        try
        {
            var remote = await RemoteSequential.ConnectAsync(checkpoint.Config, peers, options, checkpoint, cancellationToken).ConfigureAwait(false);
            var ends = checkpoint.LoadEnds(load.WeightDtype, load.Device);
            return new CausalLM(checkpoint.Config, ends, remote, TokenizerLoader.TryLoad(modelDir));
        }
        finally
        {
            checkpoint.Dispose();
        }
    }
}
