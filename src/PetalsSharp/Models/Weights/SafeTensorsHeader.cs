using System.Buffers.Binary;
using System.Text.Json;
using Microsoft.Win32.SafeHandles;

namespace PetalsSharp.Models.Weights;

/// <summary>One tensor described by a safetensors header.</summary>
/// <param name="Name">The tensor name, e.g. <c>model.layers.0.self_attn.q_proj.weight</c>.</param>
/// <param name="DType">The safetensors dtype name, e.g. <c>F32</c> or <c>BF16</c>.</param>
/// <param name="Shape">The tensor shape (empty for a scalar).</param>
/// <param name="Begin">Start of the tensor bytes, relative to the end of the header.</param>
/// <param name="End">End (exclusive) of the tensor bytes, relative to the end of the header.</param>
public sealed record TensorEntry(string Name, string DType, long[] Shape, long Begin, long End)
{
    /// <summary>Number of bytes the tensor occupies in the file.</summary>
    public long ByteLength => End - Begin;
}

/// <summary>
/// Parses and validates a safetensors header. Everything that Load relies on (offsets in range,
/// byte counts matching shapes, no overlaps) is checked here once, so a corrupt or hostile file fails
/// with a clear message instead of reading garbage or out of bounds later.
/// </summary>
internal static class SafeTensorsHeader
{
    /// <summary>The reference implementation caps headers at 100 MB; a larger one is corrupt, not a model.</summary>
    public const long MaxHeaderBytes = 100_000_000;

    public sealed record Parsed(
        long DataOffset,
        IReadOnlyDictionary<string, TensorEntry> Entries,
        IReadOnlyDictionary<string, string> Metadata);

    public static Parsed Read(string path, SafeFileHandle file)
    {
        long fileLength = RandomAccess.GetLength(file);
        if (fileLength < 8)
        {
            throw new CheckpointException(path,
                $"truncated safetensors file {path}: expected at least 8 bytes for the header length, file has {fileLength}");
        }

        Span<byte> lengthBytes = stackalloc byte[8];
        ReadExactly(file, lengthBytes, 0);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
        if (headerLength > MaxHeaderBytes)
        {
            throw new CheckpointException(path,
                $"invalid safetensors file {path}: header length {headerLength} exceeds the {MaxHeaderBytes}-byte limit (file has {fileLength} bytes)");
        }
        if (8 + (long)headerLength > fileLength)
        {
            throw new CheckpointException(path,
                $"truncated safetensors file {path}: header length {headerLength} is larger than the file: expected at least {8 + (long)headerLength} bytes, file has {fileLength}");
        }

        var json = new byte[headerLength];
        ReadExactly(file, json, 8);
        long dataOffset = 8 + (long)headerLength;

        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json);
        }
        catch (JsonException ex)
        {
            throw new CheckpointException(path, $"malformed safetensors header JSON in {path}: {ex.Message}", inner: ex);
        }

        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new CheckpointException(path,
                    $"malformed safetensors header JSON in {path}: expected an object, found {doc.RootElement.ValueKind}");
            }

            var entries = new Dictionary<string, TensorEntry>(StringComparer.Ordinal);
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    ReadMetadata(path, prop.Value, metadata);
                    continue;
                }
                if (entries.ContainsKey(prop.Name))
                {
                    throw Malformed(path, prop.Name, "the name appears twice in the header");
                }
                entries.Add(prop.Name, ReadEntry(path, prop.Name, prop.Value));
            }

            CheckLayout(path, fileLength, dataOffset, entries.Values);
            return new Parsed(dataOffset, entries, metadata);
        }
    }

    private static void ReadExactly(SafeFileHandle file, Span<byte> buffer, long offset)
    {
        // Lengths were checked against the file size, so a short read means the file shrank under us.
        while (buffer.Length > 0)
        {
            int n = RandomAccess.Read(file, buffer, offset);
            if (n == 0) throw new EndOfStreamException();
            buffer = buffer[n..];
            offset += n;
        }
    }

    private static void ReadMetadata(string path, JsonElement value, Dictionary<string, string> metadata)
    {
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw new CheckpointException(path, $"malformed safetensors header JSON in {path}: __metadata__ must be an object of strings");
        }
        foreach (var m in value.EnumerateObject())
        {
            if (m.Value.ValueKind != JsonValueKind.String)
            {
                throw new CheckpointException(path,
                    $"malformed safetensors header JSON in {path}: __metadata__ value '{m.Name}' is not a string");
            }
            metadata[m.Name] = m.Value.GetString()!;
        }
    }

    private static TensorEntry ReadEntry(string path, string name, JsonElement value)
    {
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw Malformed(path, name, "the entry is not an object");
        }
        if (!value.TryGetProperty("dtype", out var dtypeEl) || dtypeEl.ValueKind != JsonValueKind.String)
        {
            throw Malformed(path, name, "missing or non-string 'dtype'");
        }
        string dtype = dtypeEl.GetString()!;
        if (!SafeTensorsDType.TryParse(dtype, out _, out int elementSize))
        {
            throw new CheckpointException(path,
                $"unsupported dtype '{dtype}' for tensor '{name}' in {path} (supported: {string.Join(", ", SafeTensorsDType.Supported)})",
                name);
        }

        long[] shape = ReadLongs(path, name, value, "shape", expectedCount: null);
        long[] offsets = ReadLongs(path, name, value, "data_offsets", expectedCount: 2);
        long begin = offsets[0], end = offsets[1];
        if (begin > end)
        {
            throw Malformed(path, name, $"data_offsets [{begin}, {end}] begin after end");
        }

        long numel = 1;
        try
        {
            foreach (long d in shape) numel = checked(numel * d);
            long expectedBytes = checked(numel * elementSize);
            if (end - begin != expectedBytes)
            {
                throw Malformed(path, name,
                    $"data_offsets [{begin}, {end}] span {end - begin} bytes but shape {FormatShape(shape)} of {dtype} needs {expectedBytes}");
            }
        }
        catch (OverflowException)
        {
            throw Malformed(path, name, $"shape {FormatShape(shape)} is too large");
        }
        return new TensorEntry(name, dtype, shape, begin, end);
    }

    private static long[] ReadLongs(string path, string name, JsonElement value, string key, int? expectedCount)
    {
        if (!value.TryGetProperty(key, out var arr) || arr.ValueKind != JsonValueKind.Array)
        {
            throw Malformed(path, name, $"missing or non-array '{key}'");
        }
        int count = arr.GetArrayLength();
        if (expectedCount is int n && count != n)
        {
            throw Malformed(path, name, $"'{key}' must have {n} elements, has {count}");
        }
        var result = new long[count];
        int i = 0;
        foreach (var el in arr.EnumerateArray())
        {
            if (el.ValueKind != JsonValueKind.Number || !el.TryGetInt64(out long v) || v < 0)
            {
                throw Malformed(path, name, $"'{key}' must hold non-negative integers");
            }
            result[i++] = v;
        }
        return result;
    }

    private static void CheckLayout(string path, long fileLength, long dataOffset, IEnumerable<TensorEntry> entries)
    {
        long available = fileLength - dataOffset;
        long needed = 0;
        TensorEntry? previous = null;
        foreach (var e in entries.OrderBy(e => e.Begin).ThenBy(e => e.End))
        {
            if (previous is not null && e.Begin < previous.End && e.ByteLength > 0)
            {
                throw Malformed(path, e.Name, $"bytes [{e.Begin}, {e.End}) overlap tensor '{previous.Name}' [{previous.Begin}, {previous.End})");
            }
            if (e.ByteLength > 0) previous = e;
            needed = Math.Max(needed, e.End);
        }
        if (needed > available)
        {
            throw new CheckpointException(path,
                $"truncated safetensors file {path}: expected {dataOffset + needed} bytes, file has {fileLength}");
        }
    }

    internal static string FormatShape(long[] shape) => "[" + string.Join(", ", shape) + "]";

    private static CheckpointException Malformed(string path, string name, string why) =>
        new(path, $"malformed safetensors header in {path}: tensor '{name}': {why}", name);
}
