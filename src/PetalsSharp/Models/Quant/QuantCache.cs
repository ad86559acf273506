using System.Buffers.Binary;
using PetalsSharp.Models.Weights;
using static TorchSharp.torch;

namespace PetalsSharp.Models.Quant;

/// <summary>
/// Packed matrices kept on disk, so a restarted server does not quantize its span again: one file per matrix and
/// format under <c>$PETALS_CACHE/quantized</c> (default <c>~/.cache/petals-sharp/quantized</c>), named by the
/// source tensor's content hash (<see cref="WeightStore.ContentHash"/>, which a server computes for its fingerprints
/// anyway). A file is written under a temporary name and renamed, so a crash leaves no half file; a file whose
/// header or length does not match is ignored and rewritten. <c>PETALS_QUANT_CACHE=off</c> disables it.
/// </summary>
public static class QuantCache
{
    const uint Magic = 0x31515350;   // "PSQ1"
    const int HeaderBytes = 24;      // magic, format, rows (int64), cols (int64)

    static int _hits, _misses;

    /// <summary>Loads served from a cache file, and loads that quantized (tests read these).</summary>
    public static (int Hits, int Misses) Counts => (Volatile.Read(ref _hits), Volatile.Read(ref _misses));

    public static bool Enabled => Environment.GetEnvironmentVariable("PETALS_QUANT_CACHE") is not "off";

    public static string Directory => Path.Combine(Runtime.CacheDirectory, "quantized");

    /// <summary>Matrix <paramref name="spec"/> packed in <paramref name="format"/>: from the cache when it holds it, else quantized and stored.</summary>
    public static Tensor Load(WeightStore store, TensorSpec spec, QuantFormat format)
    {
        if (!Enabled) return store.LoadQuantized(spec.Name, format, spec.Shape);
        long rows = spec.Shape[0], cols = spec.Shape[1];
        int rowBytes = format.RowBytes(cols);
        var path = Path.Combine(Directory, $"{store.ContentHash(spec.Name)}-{format.Name()}.q");
        if (TryRead(path, format, rows, cols, rowBytes) is { } cached)
        {
            Interlocked.Increment(ref _hits);
            return cached;
        }
        var packed = store.LoadQuantized(spec.Name, format, spec.Shape);                  // [rows, RowBytes]
        Interlocked.Increment(ref _misses);
        TryWrite(path, format, rows, cols, packed);
        return packed;
    }

    static Tensor? TryRead(string path, QuantFormat format, long rows, long cols, int rowBytes)
    {
        try
        {
            using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
            if (RandomAccess.GetLength(handle) != HeaderBytes + rows * rowBytes) return null;
            Span<byte> header = stackalloc byte[HeaderBytes];
            if (RandomAccess.Read(handle, header, 0) != HeaderBytes || BinaryPrimitives.ReadUInt32LittleEndian(header) != Magic
                || BinaryPrimitives.ReadInt32LittleEndian(header[4..]) != (int)format
                || BinaryPrimitives.ReadInt64LittleEndian(header[8..]) != rows || BinaryPrimitives.ReadInt64LittleEndian(header[16..]) != cols)
                return null;
            var result = empty([rows, rowBytes], ScalarType.Byte);                          // [rows, RowBytes]
            long offset = HeaderBytes;
            bool complete = true;
            TensorBytes.ForEachChunk(result, (span, at) =>
            {
                int read = 0;
                while (read < span.Length)
                {
                    int n = RandomAccess.Read(handle, span[read..], offset + at + read);
                    if (n <= 0) { complete = false; return; }
                    read += n;
                }
            });
            if (complete) return result;
            result.Dispose();
            return null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>Best effort: a read-only or full disk costs the next start a quantization, nothing else.</summary>
    static void TryWrite(string path, QuantFormat format, long rows, long cols, Tensor packed)
    {
        var temp = $"{path}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        try
        {
            System.IO.Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            using (var handle = File.OpenHandle(temp, FileMode.CreateNew, FileAccess.Write))
            {
                Span<byte> header = stackalloc byte[HeaderBytes];
                BinaryPrimitives.WriteUInt32LittleEndian(header, Magic);
                BinaryPrimitives.WriteInt32LittleEndian(header[4..], (int)format);
                BinaryPrimitives.WriteInt64LittleEndian(header[8..], rows);
                BinaryPrimitives.WriteInt64LittleEndian(header[16..], cols);
                RandomAccess.Write(handle, header, 0);
                TensorBytes.ForEachChunk(packed, (span, at) => RandomAccess.Write(handle, span, HeaderBytes + at));
            }
            File.Move(temp, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            try { File.Delete(temp); }
            catch (Exception) { /* nothing more to do */ }
        }
    }
}
