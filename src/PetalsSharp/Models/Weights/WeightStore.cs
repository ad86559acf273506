using System.Text.Json;
using static TorchSharp.torch;

namespace PetalsSharp.Models.Weights;

/// <summary>
/// The weights of a Hugging Face checkpoint directory: either one <c>model.safetensors</c> or shards listed
/// by <c>model.safetensors.index.json</c>. Shard files are opened lazily, only when a tensor that lives in
/// them is asked for, so a server that serves blocks 4..8 never opens the shards holding other blocks.
/// </summary>
public sealed class WeightStore : IDisposable
{
    /// <summary>The single-file checkpoint name.</summary>
    public const string SingleFileName = "model.safetensors";

    /// <summary>The sharded checkpoint index name.</summary>
    public const string IndexFileName = "model.safetensors.index.json";

    private readonly Dictionary<string, string>? weightMap;
    private readonly Dictionary<string, SafeTensorsFile> openFiles = new(StringComparer.Ordinal);
    private readonly Lock gate = new();
    private int loadedTensorCount;
    private bool disposed;

    private WeightStore(string directory, string? indexPath, Dictionary<string, string>? weightMap)
    {
        Directory = directory;
        IndexPath = indexPath;
        this.weightMap = weightMap;
    }

    /// <summary>The checkpoint directory (absolute).</summary>
    public string Directory { get; }

    /// <summary>The index file for a sharded checkpoint; null for a single-file checkpoint.</summary>
    public string? IndexPath { get; }

    /// <summary>How many tensors <see cref="Load"/> has returned so far.</summary>
    public int LoadedTensorCount => Volatile.Read(ref loadedTensorCount);

    /// <summary>The safetensors files opened so far (absolute paths).</summary>
    public IReadOnlyCollection<string> OpenedFiles
    {
        get
        {
            lock (gate) return openFiles.Keys.ToArray();
        }
    }

    /// <summary>
    /// Every tensor name in the checkpoint. For a sharded checkpoint this comes from the index and opens no shard;
    /// for a single file it opens that file.
    /// </summary>
    public IReadOnlyCollection<string> Names =>
        weightMap is not null ? weightMap.Keys : SingleFile().Entries.Keys.ToArray();

    /// <summary>
    /// Opens a checkpoint directory. Only the index (if any) is read here; tensor files are opened on demand, and a
    /// shard the index names but the folder lacks is an error only when one of its tensors is asked for.
    /// </summary>
    /// <param name="directory">A directory holding <c>model.safetensors</c> or <c>model.safetensors.index.json</c> and its shards.</param>
    /// <exception cref="CheckpointException">No checkpoint, a malformed index, or an index naming a missing shard.</exception>
    public static WeightStore Open(string directory)
    {
        string dir = Path.GetFullPath(directory);
        if (!System.IO.Directory.Exists(dir))
        {
            throw new CheckpointException(dir, $"checkpoint directory {dir} does not exist");
        }

        // Same precedence as transformers: a single file wins over an index.
        if (File.Exists(Path.Combine(dir, SingleFileName)))
        {
            return new WeightStore(dir, null, null);
        }
        string index = Path.Combine(dir, IndexFileName);
        if (File.Exists(index))
        {
            return new WeightStore(dir, index, ReadIndex(dir, index));
        }
        throw new CheckpointException(dir,
            $"no checkpoint in {dir}: expected {SingleFileName} or {IndexFileName} " +
            "(only the safetensors format is supported; convert .bin/.pt/.gguf checkpoints to safetensors first)");
    }

    /// <summary>Whether the checkpoint has a tensor of this name.</summary>
    public bool Contains(string name) =>
        weightMap is not null ? weightMap.ContainsKey(name) : SingleFile().Contains(name);

    /// <summary>
    /// Whether the file holding <paramref name="name"/> is present: false for a tensor of a shard that was not
    /// downloaded (or a name the checkpoint lacks).
    /// </summary>
    public bool HasFileFor(string name) =>
        weightMap is not null ? weightMap.TryGetValue(name, out var shard) && File.Exists(shard) : SingleFile().Contains(name);

    /// <summary>The stored shape of a tensor (opens the file holding it, which reads only its header).</summary>
    /// <exception cref="CheckpointException">No tensor of that name.</exception>
    public long[] Shape(string name) => (long[])Entry(name).Entry.Shape.Clone();

    /// <summary>Loads a tensor converted to <paramref name="dtype"/>; see <see cref="SafeTensorsFile.Load"/> for aliasing.</summary>
    /// <param name="name">The tensor name.</param>
    /// <param name="dtype">The dtype to return (float32 for compute, bfloat16 to store weights compactly).</param>
    /// <param name="expectedShape">If given, the stored shape must equal it.</param>
    /// <exception cref="CheckpointException">No tensor of that name, or a shape other than <paramref name="expectedShape"/>.</exception>
    public Tensor Load(string name, ScalarType dtype = ScalarType.Float32, long[]? expectedShape = null)
    {
        var (file, entry) = Entry(name);
        if (expectedShape is not null && !expectedShape.AsSpan().SequenceEqual(entry.Shape))
        {
            throw new CheckpointException(file.Path,
                $"tensor '{name}' in {file.Path} has shape {SafeTensorsHeader.FormatShape(entry.Shape)}, " +
                $"expected {SafeTensorsHeader.FormatShape(expectedShape)}", name);
        }
        var tensor = file.Load(name, dtype);
        Interlocked.Increment(ref loadedTensorCount);
        return tensor;
    }

    /// <summary>Loads matrix <paramref name="name"/> packed in <paramref name="format"/> (see <see cref="SafeTensorsFile.LoadQuantized"/>).</summary>
    public Tensor LoadQuantized(string name, Quant.QuantFormat format, long[]? expectedShape = null)
    {
        var (file, entry) = Entry(name);
        if (expectedShape is not null && !expectedShape.AsSpan().SequenceEqual(entry.Shape))
        {
            throw new CheckpointException(file.Path,
                $"tensor '{name}' in {file.Path} has shape {SafeTensorsHeader.FormatShape(entry.Shape)}, " +
                $"expected {SafeTensorsHeader.FormatShape(expectedShape)}", name);
        }
        var tensor = file.LoadQuantized(name, format);
        Interlocked.Increment(ref loadedTensorCount);
        return tensor;
    }

    /// <summary>
    /// A hash of the tensor as stored (dtype, shape and raw bytes, XxHash128), independent of the dtype it is loaded
    /// in, so a client and a server holding the same files agree on it without loading anything. Remembered: a
    /// server hashes its span for the fingerprints and again to find its quantized copy.
    /// </summary>
    public string ContentHash(string name) => contentHashes.GetOrAdd(name, HashContent);

    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, string> contentHashes = new(StringComparer.Ordinal);

    private string HashContent(string name)
    {
        var (file, entry) = Entry(name);
        var hash = new System.IO.Hashing.XxHash128();
        hash.Append(System.Text.Encoding.UTF8.GetBytes($"{entry.DType}[{string.Join(",", entry.Shape)}]"));
        using var handle = File.OpenHandle(file.Path, FileMode.Open, FileAccess.Read, FileShare.Read);
        var buffer = new byte[1 << 20];
        long offset = file.DataOffset + entry.Begin, end = file.DataOffset + entry.End;
        while (offset < end)
        {
            int read = RandomAccess.Read(handle, buffer.AsSpan(0, (int)Math.Min(buffer.Length, end - offset)), offset);
            if (read <= 0) throw new CheckpointException(file.Path, $"file ended while hashing tensor '{name}'", name);
            hash.Append(buffer.AsSpan(0, read));
            offset += read;
        }
        return Convert.ToHexStringLower(hash.GetCurrentHash());
    }

    /// <summary>Closes the opened files. Tensors already loaded stay valid.</summary>
    public void Dispose()
    {
        lock (gate)
        {
            if (disposed) return;
            disposed = true;
            foreach (var f in openFiles.Values) f.Dispose();
            openFiles.Clear();
        }
    }

    private (SafeTensorsFile File, TensorEntry Entry) Entry(string name)
    {
        if (weightMap is null)
        {
            var single = SingleFile();
            if (!single.Entries.TryGetValue(name, out var e))
            {
                throw new CheckpointException(single.Path, $"tensor '{name}' not found in {single.Path}", name);
            }
            return (single, e);
        }

        if (!weightMap.TryGetValue(name, out var shardPath))
        {
            throw new CheckpointException(IndexPath!, $"tensor '{name}' not found in {IndexPath} (not in its weight_map)", name);
        }
        // A shard may be absent on purpose (a hub download fetches only the shards a process needs): fail on use.
        if (!File.Exists(shardPath))
        {
            throw new CheckpointException(shardPath,
                $"checkpoint index {IndexPath} maps tensor '{name}' to shard {shardPath}, which does not exist", name);
        }
        var shard = OpenFile(shardPath);
        if (!shard.Entries.TryGetValue(name, out var entry))
        {
            throw new CheckpointException(shard.Path,
                $"tensor '{name}' not found in {shard.Path}, although {IndexPath} maps it to that shard", name);
        }
        return (shard, entry);
    }

    private SafeTensorsFile SingleFile() => OpenFile(Path.Combine(Directory, SingleFileName));

    private SafeTensorsFile OpenFile(string path)
    {
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            if (!openFiles.TryGetValue(path, out var file))
            {
                file = new SafeTensorsFile(path);
                openFiles.Add(path, file);
            }
            return file;
        }
    }

    private static Dictionary<string, string> ReadIndex(string dir, string index)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(File.ReadAllBytes(index));
        }
        catch (JsonException ex)
        {
            throw new CheckpointException(index, $"malformed checkpoint index JSON in {index}: {ex.Message}", inner: ex);
        }

        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object
                || !doc.RootElement.TryGetProperty("weight_map", out var map)
                || map.ValueKind != JsonValueKind.Object)
            {
                throw new CheckpointException(index, $"malformed checkpoint index JSON in {index}: expected an object with a \"weight_map\" object");
            }

            var result = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var prop in map.EnumerateObject())
            {
                if (prop.Value.ValueKind != JsonValueKind.String || string.IsNullOrEmpty(prop.Value.GetString()))
                {
                    throw new CheckpointException(index,
                        $"malformed checkpoint index JSON in {index}: weight_map entry for '{prop.Name}' is not a file name", prop.Name);
                }
                string shard = prop.Value.GetString()!;
                string shardPath = Path.GetFullPath(Path.Combine(dir, shard));
                // An index comes from whoever published the checkpoint; it must not reach files outside the directory.
                if (!shardPath.StartsWith(dir + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                {
                    throw new CheckpointException(index,
                        $"malformed checkpoint index JSON in {index}: shard '{shard}' for tensor '{prop.Name}' is outside {dir}", prop.Name);
                }
                result[prop.Name] = shardPath;
            }
            return result;
        }
    }
}
