using static TorchSharp.torch;

namespace PetalsSharp.Models.Bench;

/// <summary>How many bytes of weights a step reads and a model holds, in the dtype they are stored in.</summary>
public static class WeightReads
{
    /// <summary>
    /// Bytes one single-token step reads: every weight of <paramref name="blocks"/> once, but of a mixture of experts
    /// only the experts a token is routed to (top-k of num_local_experts; on average each expert is read that share
    /// of the time), plus, with <paramref name="ends"/>, the final norm and the LM head. The embedding row a token
    /// looks up is a few KB and not counted.
    /// </summary>
    public static long PerDecodedToken(ModelConfig config, IEnumerable<DecoderBlock> blocks, ModelEnds? ends = null)
    {
        double expertShare = config is MixtralConfig m ? (double)m.NumExpertsPerTok / m.NumLocalExperts : 1.0;
        double bytes = 0;
        foreach (var block in blocks)
        {
            foreach (var (name, p) in block.named_parameters())
                bytes += Bytes(p) * (name.Contains(".experts.", StringComparison.Ordinal) ? expertShare : 1.0);
        }
        if (ends is not null)
            bytes += Bytes(ends.HeadWeight) + ends.named_parameters().Where(p => p.name.StartsWith("norm.", StringComparison.Ordinal)).Sum(p => Bytes(p.parameter));
        return (long)Math.Round(bytes);
    }

    /// <summary>Bytes of every distinct weight held (a tied embedding and head count once).</summary>
    public static long Held(IEnumerable<DecoderBlock> blocks, ModelEnds? ends = null)
    {
        var modules = blocks.Cast<nn.Module>();
        if (ends is not null) modules = modules.Append(ends);
        return modules.SelectMany(m => m.parameters()).DistinctBy(p => p.Handle).Sum(Bytes);
    }

    static long Bytes(Tensor t) => t.NumberOfElements * t.ElementSize;
}
