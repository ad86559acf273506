using Google.Protobuf;
using PetalsSharp.Wire.V1;
using WireTensor = PetalsSharp.Wire.V1.Tensor;

namespace PetalsSharp.Wire;

/// <summary>Cuts a serialized tensor into chunks for the Forward/Backward streams.</summary>
public static class TensorChunks
{
    public static IEnumerable<CallMessage> Split(string name, WireTensor tensor, int chunkBytes = Protocol.ChunkBytes)
    {
        var bytes = tensor.ToByteString();
        if (bytes.Length == 0)
        {
            yield return new CallMessage { Chunk = new TensorChunk { Name = name, TotalBytes = 0, Last = true } };
            yield break;
        }
        for (int offset = 0; offset < bytes.Length; offset += chunkBytes)
        {
            int length = Math.Min(chunkBytes, bytes.Length - offset);
            yield return new CallMessage
            {
                Chunk = new TensorChunk
                {
                    Name = offset == 0 ? name : "",
                    TotalBytes = offset == 0 ? bytes.Length : 0,
                    Part = UnsafeByteOperations.UnsafeWrap(bytes.Memory.Slice(offset, length)),
                    Last = offset + length == bytes.Length,
                },
            };
        }
    }
}

/// <summary>A well-formed tensor bigger than the receiver agreed to take (a server: RESOURCE_EXHAUSTED, try another).</summary>
public sealed class TensorTooLargeException(string message) : WireException(message);

/// <summary>
/// Reads chunked tensors, refusing anything out of order, oversized or truncated before it keeps a byte of it.
/// Only the names the caller expects (or allows) are accepted, each once. Optional tensors must arrive before the
/// last expected one: the reader is complete as soon as every expected tensor is whole.
/// <paramref name="limitOf"/> may lower the limit per tensor name (the bytes, and why, for the error message).
/// Subclasses decide what a tensor's bytes become as they arrive.
/// </summary>
public abstract class ChunkedTensorReader<T>(IReadOnlyCollection<string> expectedNames, long maxTensorBytes,
    IReadOnlyCollection<string>? optionalNames, Func<string, (long Bytes, string Why)>? limitOf)
{
    readonly Dictionary<string, T> _done = new();
    string? _current;
    long _declared;
    long _filled;

    public IReadOnlyDictionary<string, T> Completed => _done;

    public bool IsComplete => _current is null && expectedNames.All(_done.ContainsKey);

    /// <summary>Removes a completed tensor (the caller owns it from then on); default when it did not come.</summary>
    public T? Take(string name) => _done.Remove(name, out var t) ? t : default;

    /// <summary>A tensor of <paramref name="declared"/> bytes begins.</summary>
    protected abstract void Begin(string name, long declared);

    /// <summary>Its next bytes, at <paramref name="offset"/>.</summary>
    protected abstract void Append(ReadOnlySpan<byte> part, long offset);

    /// <summary>All its bytes arrived.</summary>
    protected abstract T End(string name, long length);

    public void Add(TensorChunk chunk)
    {
        if (_current is null)
        {
            if (!expectedNames.Contains(chunk.Name) && optionalNames?.Contains(chunk.Name) != true)
                throw new WireException($"unexpected tensor '{chunk.Name}' (expected {string.Join(", ", expectedNames.Concat(optionalNames ?? []))})");
            if (_done.ContainsKey(chunk.Name)) throw new WireException($"tensor '{chunk.Name}' sent twice");
            // Refused on the first chunk, before a byte is kept: a declared size is checked, never trusted.
            if (chunk.TotalBytes < 0 || chunk.TotalBytes > maxTensorBytes || chunk.TotalBytes > Array.MaxLength)
                throw new WireException($"tensor '{chunk.Name}' declares {chunk.TotalBytes} bytes; the limit is {maxTensorBytes}");
            if (limitOf?.Invoke(chunk.Name) is (long limit, string why) && chunk.TotalBytes > limit)
                throw new TensorTooLargeException($"tensor '{chunk.Name}' declares {chunk.TotalBytes} bytes; the limit is {limit} ({why})");
            _current = chunk.Name;
            _declared = chunk.TotalBytes;
            _filled = 0;
            Begin(_current, _declared);
        }
        else if (chunk.Name.Length != 0 && chunk.Name != _current)
        {
            throw new WireException($"tensor '{chunk.Name}' started before '{_current}' was complete");
        }
        if (_filled + chunk.Part.Length > _declared)
            throw new WireException($"tensor '{_current}' sent more bytes than the {_declared} it declared");
        Append(chunk.Part.Span, _filled);
        _filled += chunk.Part.Length;
        if (!chunk.Last) return;
        if (_filled != _declared)
            throw new WireException($"tensor '{_current}' is truncated: {_filled} of {_declared} bytes");
        _done[_current] = End(_current, _filled);
        _current = null;
    }

    /// <summary>Throws unless every expected tensor arrived whole.</summary>
    public void RequireComplete()
    {
        if (_current is not null) throw new WireException($"stream ended in the middle of tensor '{_current}'");
        var missing = expectedNames.Where(n => !_done.ContainsKey(n)).ToList();
        if (missing.Count > 0) throw new WireException($"missing tensor(s): {string.Join(", ", missing)}");
    }
}

/// <summary>
/// Reassembles chunked tensors as <c>Tensor</c> messages (see <see cref="ChunkedTensorReader{T}"/>).
/// Buffers grow with the bytes that actually arrive (a declared size is a promise, not a reason to allocate), and
/// <paramref name="reserve"/> is told of every growth first, so a caller can cap memory over many streams.
/// The assembled bytes are parsed without a copy: the tensor's data is a view of the one buffer.
/// </summary>
public sealed class TensorAssembler(IReadOnlyCollection<string> expectedNames, long maxTensorBytes,
    IReadOnlyCollection<string>? optionalNames = null, Action<long>? reserve = null,
    Func<string, (long Bytes, string Why)>? limitOf = null)
    : ChunkedTensorReader<WireTensor>(expectedNames, maxTensorBytes, optionalNames, limitOf)
{
    const int InitialBytes = 1 << 20;

    byte[] _buffer = [];
    long _declared;

    protected override void Begin(string name, long declared)
    {
        _declared = declared;
        _buffer = [];
    }

    protected override void Append(ReadOnlySpan<byte> part, long offset)
    {
        Grow(offset + part.Length);
        part.CopyTo(_buffer.AsSpan((int)offset));
    }

    protected override WireTensor End(string name, long length)
    {
        var t = TensorMessage.ParseWithoutCopy(_buffer.AsMemory(0, (int)length), name);
        _buffer = [];
        return t;
    }

    /// <summary>Doubles the buffer (from 1 MiB, up to the declared size) until <paramref name="needed"/> bytes fit.</summary>
    void Grow(long needed)
    {
        if (needed <= _buffer.Length) return;
        long size = Math.Max(_buffer.Length, Math.Min(_declared, InitialBytes));
        while (size < needed) size = Math.Min(_declared, size * 2);
        reserve?.Invoke(size - _buffer.Length);
        Array.Resize(ref _buffer, (int)size);
    }
}

/// <summary>
/// Reads chunked tensors and decodes each while it arrives (<see cref="TensorStreamDecoder"/>), so a received
/// tensor is held once, as its decoded values. <paramref name="decoderFor"/> makes the decoder for a name (with
/// its element limit, header check and memory reservation). Dispose to free tensors nobody took.
/// </summary>
public sealed class TensorDecodingAssembler(IReadOnlyCollection<string> expectedNames, long maxTensorBytes,
    Func<string, TensorStreamDecoder> decoderFor, Func<string, (long Bytes, string Why)>? limitOf = null)
    : ChunkedTensorReader<TorchSharp.torch.Tensor>(expectedNames, maxTensorBytes, null, limitOf), IDisposable
{
    TensorStreamDecoder? _decoder;

    protected override void Begin(string name, long declared) => _decoder = decoderFor(name);

    protected override void Append(ReadOnlySpan<byte> part, long offset) => _decoder!.Write(part);

    protected override TorchSharp.torch.Tensor End(string name, long length)
    {
        using var decoder = _decoder!;
        _decoder = null;
        return decoder.Finish();
    }

    public void Dispose()
    {
        _decoder?.Dispose();
        _decoder = null;
        foreach (var t in Completed.Values) t.Dispose();
    }
}
