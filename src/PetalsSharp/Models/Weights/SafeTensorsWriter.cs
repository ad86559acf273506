using System.Buffers.Binary;
using System.Text.Encodings.Web;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace PetalsSharp.Models.Weights;

/// <summary>Writes tensors in the standard safetensors layout.</summary>
public static class SafeTensorsWriter
{
    /// <summary>
    /// Writes <paramref name="tensors"/> to <paramref name="path"/>: 8-byte little-endian header length,
    /// JSON header padded with spaces to a multiple of 8 (with <c>__metadata__</c> holding
    /// <c>"format": "pt"</c> plus <paramref name="metadata"/>), then the tensor bytes in name order.
    /// Tensor data is streamed to the file; no buffer the size of the checkpoint is built.
    /// The file is written to a temporary name and renamed, so a crash never leaves a half-written checkpoint.
    /// </summary>
    /// <param name="path">Destination file; overwritten if it exists.</param>
    /// <param name="tensors">Named tensors, each written in its own dtype (convert before calling to store e.g. bf16).</param>
    /// <param name="metadata">Extra <c>__metadata__</c> entries; they may override <c>format</c>.</param>
    /// <exception cref="ArgumentException">Duplicate names, an empty name, or a dtype safetensors cannot hold.</exception>
    public static void Write(string path, IEnumerable<(string name, Tensor t)> tensors, IDictionary<string, string>? metadata = null)
    {
        var items = tensors.OrderBy(x => x.name, StringComparer.Ordinal).ToList();
        var dtypes = new string[items.Count];
        for (int i = 0; i < items.Count; i++)
        {
            var (name, t) = items[i];
            if (string.IsNullOrEmpty(name) || name == "__metadata__")
            {
                throw new ArgumentException($"invalid tensor name '{name}'", nameof(tensors));
            }
            if (i > 0 && items[i - 1].name == name)
            {
                throw new ArgumentException($"duplicate tensor name '{name}'", nameof(tensors));
            }
            dtypes[i] = SafeTensorsDType.NameOf(t.dtype)
                ?? throw new ArgumentException($"tensor '{name}' has dtype {t.dtype}, which safetensors cannot store here", nameof(tensors));
        }

        byte[] header = BuildHeader(items, dtypes, metadata);
        string fullPath = Path.GetFullPath(path);
        string temp = fullPath + ".tmp-" + Environment.ProcessId;
        try
        {
            using (var stream = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None, bufferSize: 1 << 20))
            {
                Span<byte> length = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)header.Length);
                stream.Write(length);
                stream.Write(header);
                foreach (var (_, t) in items) WriteData(stream, t);
            }
            File.Move(temp, fullPath, overwrite: true);
        }
        catch
        {
            File.Delete(temp);
            throw;
        }
    }

    private static byte[] BuildHeader(List<(string name, Tensor t)> items, string[] dtypes, IDictionary<string, string>? metadata)
    {
        var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            json.WriteStartObject("__metadata__");
            var meta = new SortedDictionary<string, string>(StringComparer.Ordinal) { ["format"] = "pt" };
            if (metadata is not null)
            {
                foreach (var kv in metadata) meta[kv.Key] = kv.Value;
            }
            foreach (var kv in meta) json.WriteString(kv.Key, kv.Value);
            json.WriteEndObject();

            long offset = 0;
            for (int i = 0; i < items.Count; i++)
            {
                var t = items[i].t;
                long bytes = t.numel() * t.element_size();
                json.WriteStartObject(items[i].name);
                json.WriteString("dtype", dtypes[i]);
                json.WriteStartArray("shape");
                foreach (long d in t.shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + bytes);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += bytes;
            }
            json.WriteEndObject();
        }

        // Padding to 8 keeps the data section 8-byte aligned, which is what lets readers map tensors in place.
        int padded = (int)((buffer.Length + 7) / 8 * 8);
        var header = new byte[padded];
        buffer.GetBuffer().AsSpan(0, (int)buffer.Length).CopyTo(header);
        header.AsSpan((int)buffer.Length).Fill((byte)' ');
        return header;
    }

    private static void WriteData(Stream stream, Tensor t)
    {
        using var scope = NewDisposeScope();
        var source = t.device_type == DeviceType.CPU ? t : t.cpu();
        var contiguous = source.is_contiguous() ? source : source.contiguous();
        TensorBytes.ForEachChunk(contiguous, (span, _) => stream.Write(span));
    }
}
