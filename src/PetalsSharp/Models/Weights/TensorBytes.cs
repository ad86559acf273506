using static TorchSharp.torch;

namespace PetalsSharp.Models.Weights;

/// <summary>Raw byte access to contiguous CPU tensors, in chunks small enough for a <see cref="Span{T}"/>.</summary>
internal static class TensorBytes
{
    public delegate void ChunkAction(Span<byte> bytes, long byteOffset);

    /// <summary>Span lengths are ints; 256 MB chunks keep multi-gigabyte tensors (embeddings of big vocabularies) workable.</summary>
    public const long DefaultChunkBytes = 256L << 20;

    /// <summary>Calls <paramref name="action"/> on consecutive byte ranges covering the tensor's data.</summary>
    /// <param name="tensor">A contiguous CPU tensor.</param>
    /// <param name="action">Receives each chunk and its byte offset from the tensor start.</param>
    /// <param name="chunkBytes">Largest chunk; only tests pass a smaller one, to exercise chunking cheaply.</param>
    public static void ForEachChunk(Tensor tensor, ChunkAction action, long chunkBytes = DefaultChunkBytes)
    {
        if (!tensor.is_contiguous()) throw new ArgumentException("tensor must be contiguous", nameof(tensor));
        long numel = tensor.numel();
        if (numel == 0) return;
        long elementSize = tensor.element_size();
        if (numel * elementSize <= chunkBytes)
        {
            action(tensor.bytes, 0);
            return;
        }

        long perChunk = Math.Max(1, chunkBytes / elementSize);
        using var flat = tensor.view(-1);
        for (long start = 0; start < numel; start += perChunk)
        {
            using var part = flat.narrow(0, start, Math.Min(perChunk, numel - start));
            action(part.bytes, start * elementSize);
        }
    }
}
