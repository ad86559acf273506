using Microsoft.Win32.SafeHandles;
using TorchSharp;
using static TorchSharp.torch;

namespace PetalsSharp.Models.Weights;

/// <summary>
/// One <c>.safetensors</c> file, opened for reading. The header is parsed and validated on open;
/// tensor data is memory-mapped and only paged in when a loaded tensor is touched, so a server that
/// loads a few blocks of a large checkpoint reads only those bytes.
/// </summary>
/// <remarks>
/// Tensors returned with their stored dtype alias a private (copy-on-write) mapping of the file:
/// writing into them never changes the file, but later loads of the same tensor from this instance
/// see the write. Treat them as read-only. Returned tensors stay valid after this object is disposed
/// (libtorch reference-counts the mapping).
/// A tensor asked for in another dtype is read and converted in chunks without touching the mapping: converted
/// from a mapping, the source pages would stay resident beside the copy for as long as anything holds the mapping
/// (an f32 checkpoint served in bf16 would cost three times its bf16 weights).
/// </remarks>
public sealed class SafeTensorsFile : IDisposable
{
    private readonly SafeFileHandle handle;
    private readonly Dictionary<ScalarType, Tensor> mappings = new();
    private readonly Lock gate = new();
    private readonly bool allowMapping;
    private bool mappingFailed;
    private int mappedLoads;
    private bool disposed;

    /// <summary>Opens and validates a safetensors file.</summary>
    /// <param name="path">Path of the <c>.safetensors</c> file.</param>
    /// <exception cref="CheckpointException">The file is missing, truncated or has an invalid header.</exception>
    public SafeTensorsFile(string path) : this(path, allowMapping: true)
    {
    }

    /// <param name="path">Path of the file.</param>
    /// <param name="allowMapping">False forces the copying read path; tests use it to check both paths agree.</param>
    internal SafeTensorsFile(string path, bool allowMapping)
    {
        Path = System.IO.Path.GetFullPath(path);
        this.allowMapping = allowMapping;
        try
        {
            handle = File.OpenHandle(Path, FileMode.Open, FileAccess.Read, FileShare.Read);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new CheckpointException(Path, $"cannot open safetensors file {Path}: {ex.Message}", inner: ex);
        }

        try
        {
            FileLength = RandomAccess.GetLength(handle);
            var header = SafeTensorsHeader.Read(Path, handle);
            DataOffset = header.DataOffset;
            Entries = header.Entries;
            Metadata = header.Metadata;
        }
        catch (IOException ex)
        {
            handle.Dispose();
            throw new CheckpointException(Path, $"cannot read safetensors file {Path}: {ex.Message}", inner: ex);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Absolute path of the file.</summary>
    public string Path { get; }

    /// <summary>Size of the file in bytes.</summary>
    public long FileLength { get; }

    /// <summary>Byte offset where tensor data begins (8 + header length).</summary>
    public long DataOffset { get; }

    /// <summary>The tensors in the file, by name.</summary>
    public IReadOnlyDictionary<string, TensorEntry> Entries { get; }

    /// <summary>The optional <c>__metadata__</c> string map (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Bytes of stored data read per chunk by a converting load: bounds its transient memory.</summary>
    internal long ConvertChunkBytes { get; init; } = 16L << 20;

    /// <summary>Loads served from the memory mapping rather than by copying; tests use it to prove the mapped path runs.</summary>
    internal int MappedLoadCount => Volatile.Read(ref mappedLoads);

    /// <summary>Why <c>torch.from_file</c> failed, if it did (loads then fall back to copying).</summary>
    internal Exception? MappingError { get; private set; }

    /// <summary>Whether the file holds a tensor of this name.</summary>
    public bool Contains(string name) => Entries.ContainsKey(name);

    /// <summary>
    /// Loads a tensor, converted to <paramref name="dtype"/>. The result is contiguous, on the CPU,
    /// has the stored shape, and is owned by the caller (dispose it).
    /// </summary>
    /// <param name="name">The tensor name.</param>
    /// <param name="dtype">The dtype to return; when it equals the stored dtype the tensor may alias the file mapping.</param>
    /// <exception cref="CheckpointException">No tensor of that name.</exception>
    public Tensor Load(string name, ScalarType dtype = ScalarType.Float32)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (!Entries.TryGetValue(name, out var entry))
        {
            throw new CheckpointException(Path, $"tensor '{name}' not found in {Path}", name);
        }
        SafeTensorsDType.TryParse(entry.DType, out var stored, out int elementSize);

        using var scope = NewDisposeScope();
        Tensor raw;
        long absolute = DataOffset + entry.Begin;
        if (entry.ByteLength == 0)
        {
            raw = empty(entry.Shape, stored);
        }
        else if (stored != dtype)
        {
            return ReadConverted(entry, stored, elementSize, absolute, dtype).MoveToOuterDisposeScope();
        }
        else if (absolute % elementSize == 0 && TryGetMapping(stored, elementSize) is Tensor mapping)
        {
            // from_file cannot map at a byte offset, and TorchSharp 0.107 has no view(dtype), so the
            // whole file is mapped once per stored dtype and the tensor is a narrow of that mapping.
            // That only works when the tensor starts on an element boundary; otherwise we copy.
            raw = mapping.narrow(0, absolute / elementSize, entry.ByteLength / elementSize).view(entry.Shape);
            Interlocked.Increment(ref mappedLoads);
        }
        else
        {
            raw = ReadCopy(entry, stored, absolute);
        }

        var result = raw.dtype == dtype ? raw : raw.to_type(dtype);
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Loads a matrix <c>[rows, in]</c> packed in <paramref name="format"/> (uint8 <c>[rows, RowBytes(in)]</c>). Whole
    /// rows are read, converted to f32 and quantized a chunk at a time, without touching the mapping: the process
    /// never holds more of the source than one chunk.
    /// </summary>
    public unsafe Tensor LoadQuantized(string name, Quant.QuantFormat format)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (!Entries.TryGetValue(name, out var entry))
            throw new CheckpointException(Path, $"tensor '{name}' not found in {Path}", name);
        if (entry.Shape.Length != 2)
            throw new CheckpointException(Path, $"tensor '{name}' has rank {entry.Shape.Length}; only matrices are quantized", name);
        SafeTensorsDType.TryParse(entry.DType, out var stored, out int elementSize);
        long rows = entry.Shape[0], cols = entry.Shape[1];
        int rowBytes = Quant.QuantFormats.RowBytes(format, cols);
        var result = empty([rows, rowBytes], ScalarType.Byte);                          // [rows, RowBytes]
        if (rows == 0 || cols == 0) return result;
        long perChunk = Math.Max(1, Math.Min(ConvertChunkBytes, TensorBytes.DefaultChunkBytes) / (cols * Math.Max(4, elementSize)));
        perChunk = Math.Min(perChunk, rows);
        using var staging = empty([perChunk, cols], stored);                             // [chunk, in] as stored
        using var values = empty([perChunk, cols], ScalarType.Float32);                  // [chunk, in] f32
        byte* dst = Weights.NativeMemory.Pointer<byte>(result);
        for (long start = 0; start < rows; start += perChunk)
        {
            long n = Math.Min(perChunk, rows - start);
            using var source = staging.narrow(0, 0, n);                                  // [n, in] as stored
            ReadExactly(entry, source.bytes, DataOffset + entry.Begin + start * cols * elementSize);
            using var f32 = values.narrow(0, 0, n);                                      // [n, in] f32
            f32.copy_(source);
            float* src = Weights.NativeMemory.Pointer<float>(f32);
            long first = start;
            Parallel.For(0, (int)n, r => Quant.BlockQuant.QuantizeRow(format,
                new ReadOnlySpan<float>(src + r * cols, (int)cols), new Span<byte>(dst + (first + r) * rowBytes, rowBytes)));
        }
        return result;
    }

    /// <summary>Releases the file handle and this object's references to the mappings.</summary>
    public void Dispose()
    {
        lock (gate)
        {
            if (disposed) return;
            disposed = true;
            foreach (var m in mappings.Values) m.Dispose();
            mappings.Clear();
            handle.Dispose();
        }
    }

    private Tensor? TryGetMapping(ScalarType stored, int elementSize)
    {
        if (!allowMapping) return null;
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            if (mappingFailed) return null;
            if (mappings.TryGetValue(stored, out var existing)) return existing;
            try
            {
                // shared: false maps MAP_PRIVATE: nothing written into a loaded tensor reaches the file.
                var mapped = from_file(Path, shared: false, size: FileLength / elementSize, dtype: stored);
                mapped.DetachFromDisposeScope();
                mappings.Add(stored, mapped);
                return mapped;
            }
            catch (Exception ex)
            {
                MappingError = ex;
                // Mapping is an optimisation; a filesystem that refuses mmap still gets correct data by copying.
                mappingFailed = true;
                return null;
            }
        }
    }

    private Tensor ReadCopy(TensorEntry entry, ScalarType stored, long absolute)
    {
        var tensor = empty(entry.Shape, stored);
        TensorBytes.ForEachChunk(tensor, (span, offset) => ReadExactly(entry, span, absolute + offset));
        return tensor;
    }

    /// <summary>
    /// Reads a tensor stored as <paramref name="stored"/> into a new <paramref name="dtype"/> tensor, one bounded
    /// chunk at a time: the transient is one chunk, and no page of the file is mapped into this process.
    /// </summary>
    private Tensor ReadConverted(TensorEntry entry, ScalarType stored, int elementSize, long absolute, ScalarType dtype)
    {
        var result = empty(entry.Shape, dtype);                                         // [shape] in dtype
        long count = entry.ByteLength / elementSize;
        long perChunk = Math.Max(1, Math.Min(ConvertChunkBytes, TensorBytes.DefaultChunkBytes) / elementSize);
        using var flat = result.view(-1);                                               // [N]
        using var staging = empty(Math.Min(perChunk, count), stored);                   // [chunk] as stored
        for (long start = 0; start < count; start += perChunk)
        {
            long n = Math.Min(perChunk, count - start);
            using var source = staging.narrow(0, 0, n);                                 // [n] as stored
            ReadExactly(entry, source.bytes, absolute + start * elementSize);
            using var target = flat.narrow(0, start, n);                                // [n] in dtype
            target.copy_(source);
        }
        return result;
    }

    private void ReadExactly(TensorEntry entry, Span<byte> span, long fileOffset)
    {
        int read = 0;
        while (read < span.Length)
        {
            int n = RandomAccess.Read(handle, span[read..], fileOffset + read);
            if (n == 0)
            {
                throw new CheckpointException(Path,
                    $"truncated safetensors file {Path}: tensor '{entry.Name}' needs bytes up to {DataOffset + entry.End}, file ended at {fileOffset + read}",
                    entry.Name);
            }
            read += n;
        }
    }
}
