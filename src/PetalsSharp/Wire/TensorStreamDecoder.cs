using System.Buffers.Binary;
using System.Runtime.InteropServices;
using PetalsSharp.Wire.V1;
using static TorchSharp.torch;
using WireTensor = PetalsSharp.Wire.V1.Tensor;

namespace PetalsSharp.Wire;

/// <summary>
/// Decodes a serialized <c>Tensor</c> while its bytes arrive, straight into the destination tensor: a received
/// tensor is held once, decoded, and never as bytes too. The result is what <see cref="TensorCodec.Decode"/> gives
/// for the whole message, bit for bit, with the same checks and errors.
/// </summary>
/// <remarks>
/// The header fields (shape, dtype, compression) must come before <c>data</c> and <c>scales</c>, as every protobuf
/// encoder writes them (fields in number order); a message that sends them later is refused, not buffered.
/// <paramref name="checkHeader"/> sees the header (no data) before anything is allocated and may throw.
/// <paramref name="reserve"/> is told of the decoded bytes each part will fill before it is written, so memory is
/// accounted as bytes arrive; the destination is allocated whole, but the allocator maps big blocks lazily, so
/// its pages only become resident as they are written.
/// </remarks>
public sealed class TensorStreamDecoder(string what, long maxElements, Action<WireTensor>? checkHeader = null, Action<long>? reserve = null) : IDisposable
{
    /// <summary>Shape, dtype, compression and field tags of an honest tensor take well under this.</summary>
    const int MaxHeaderBytes = 4096;

    readonly WireTensor _meta = new();
    readonly byte[] _head = new byte[MaxHeaderBytes];
    int _headLength;
    int _field;               // the length-delimited field being streamed: data, scales, or -1 for an unknown one
    long _remaining;          // its bytes still to come
    long _offset;             // its bytes already consumed
    bool _checked, _dataSeen, _scalesSeen, _scalesReady;
    long _elements, _blocks;
    TorchSharp.torch.Tensor? _result;
    byte[]? _scales;
    byte _carry;              // the first byte of a 2-byte value split between two parts
    long _reservedAhead;      // decoded bytes reserved when the destination was allocated and not yet written

    /// <summary>Reserved when the destination is allocated (at most its size), as the framed bytes once were.</summary>
    const long ReserveAhead = 1 << 20;

    /// <summary>Feeds the next bytes of the serialized tensor.</summary>
    public void Write(ReadOnlySpan<byte> bytes)
    {
        while (bytes.Length > 0)
        {
            if (_remaining > 0)
            {
                int take = (int)Math.Min(_remaining, bytes.Length);
                Consume(bytes[..take]);
                bytes = bytes[take..];
                _offset += take;
                _remaining -= take;
                if (_remaining == 0) EndField();
                continue;
            }
            // Header fields are tiny: byte by byte into a bounded buffer until one parses whole.
            if (_headLength == _head.Length) throw Invalid($"header fields longer than {MaxHeaderBytes} bytes");
            _head[_headLength++] = bytes[0];
            bytes = bytes[1..];
            if (TryField()) _headLength = 0;
        }
    }

    /// <summary>The decoded tensor, once every byte was written; the caller owns it.</summary>
    public TorchSharp.torch.Tensor Finish()
    {
        if (_remaining > 0 || _headLength > 0) throw Invalid("truncated");
        if (!_dataSeen) StartData(0);   // proto3 leaves out an empty data field
        if (_meta.Compression == Compression.Int8Blockwise && !_scalesSeen && _blocks > 0)
            throw new WireException($"{what}: INT8_BLOCKWISE needs {_blocks} scales ({_blocks * 4} bytes), got 0 bytes");
        var result = _result!;
        _result = null;
        return result;
    }

    public void Dispose()
    {
        _result?.Dispose();
        _result = null;
    }

    /// <summary>Parses one field from the header buffer; false when it needs more bytes.</summary>
    bool TryField()
    {
        var span = _head.AsSpan(0, _headLength);
        int pos = 0;
        if (!TryVarint(span, ref pos, out ulong tag)) return false;
        int field = (int)(tag >> 3), wire = (int)(tag & 7);
        if (field == 0) throw Invalid("field number 0");
        switch (wire)
        {
            case 0:
            {
                if (!TryVarint(span, ref pos, out ulong value)) return false;
                switch (field)
                {
                    case WireTensor.ShapeFieldNumber: AddDimension((long)value); break;
                    case WireTensor.DtypeFieldNumber: BeforePayload("dtype"); _meta.Dtype = (DType)(int)value; break;
                    case WireTensor.CompressionFieldNumber: BeforePayload("compression"); _meta.Compression = (Compression)(int)value; break;
                }
                return true;
            }
            case 1 or 5:
                return _headLength >= pos + (wire == 1 ? 8 : 4);
            case 2:
            {
                if (!TryVarint(span, ref pos, out ulong length)) return false;
                if (length > int.MaxValue) throw Invalid($"a field of {length} bytes runs past the end");
                if (field == WireTensor.ShapeFieldNumber)
                {
                    if (pos + (long)length > MaxHeaderBytes) throw Invalid($"header fields longer than {MaxHeaderBytes} bytes");
                    if (_headLength < pos + (int)length) return false;
                    int end = pos + (int)length;
                    while (pos < end)
                    {
                        if (!TryVarint(span[..end], ref pos, out ulong d)) throw Invalid("truncated varint");
                        AddDimension((long)d);
                    }
                    return true;
                }
                if (field == WireTensor.DataFieldNumber) StartData((long)length);
                else if (field == WireTensor.ScalesFieldNumber) StartScales((long)length);
                else _field = -1;   // unknown: skipped as it streams by, as Google.Protobuf would
                _remaining = (long)length;
                _offset = 0;
                if (_remaining == 0) EndField();
                return true;
            }
            default:
                throw Invalid($"wire type {wire} in field {field}");
        }
    }

    void AddDimension(long d)
    {
        BeforePayload("shape");
        if (_meta.Shape.Count >= 16) throw Invalid("more than 16 dimensions");
        _meta.Shape.Add(d);
    }

    void BeforePayload(string name)
    {
        if (_dataSeen || _scalesSeen) throw Invalid($"{name} after the data; header fields must come first");
    }

    /// <summary>The shape and dtype checks of <see cref="TensorCodec.Decode"/>, once.</summary>
    void CheckShape()
    {
        if (_checked) return;
        // The caller's checks first: they name the tensor's role ("expected shape [batch, tokens, 64]").
        checkHeader?.Invoke(_meta);
        if (_meta.Shape.Count is 0 or > 8) throw new WireException($"{what}: rank {_meta.Shape.Count} is not supported (1 to 8 dimensions)");
        long n = 1;
        foreach (var d in _meta.Shape)
        {
            if (d < 0) throw new WireException($"{what}: negative dimension {d} in shape [{string.Join(", ", _meta.Shape)}]");
            if (d > maxElements || (n = n * d) > maxElements)
                throw new WireException($"{what}: shape [{string.Join(", ", _meta.Shape)}] exceeds the limit of {maxElements} elements");
        }
        if (_meta.Dtype == DType.Int64)
        {
            if (_meta.Compression != Compression.None) throw new WireException($"{what}: int64 tensors must be uncompressed");
        }
        else if (_meta.Dtype != DType.Float32) throw new WireException($"{what}: dtype {_meta.Dtype} is not accepted (float32 or int64)");
        else if (!TensorCodec.Supported.Contains(_meta.Compression)) throw new WireException($"{what}: unknown compression {(int)_meta.Compression}");
        _elements = n;
        _blocks = (n + TensorCodec.BlockSize - 1) / TensorCodec.BlockSize;
        _checked = true;
    }

    void StartData(long length)
    {
        if (_dataSeen) throw Invalid("data sent twice");
        CheckShape();
        long perElement = _meta.Dtype == DType.Int64 ? 8 : _meta.Compression switch
        {
            Compression.None => 4,
            Compression.Float16 or Compression.Bfloat16 => 2,
            _ => 1,
        };
        Expect(length, _elements * perElement);
        _dataSeen = true;
        _field = WireTensor.DataFieldNumber;
        // A first slice is reserved with the allocation, so a call that stalls after its first chunk still counts.
        _reservedAhead = Math.Min(_elements * (_meta.Dtype == DType.Int64 ? 8 : 4), ReserveAhead);
        if (_reservedAhead > 0) reserve?.Invoke(_reservedAhead);
        _result = empty(_meta.Shape.ToArray(), _meta.Dtype == DType.Int64 ? ScalarType.Int64 : ScalarType.Float32).DetachFromDisposeScope();
    }

    /// <summary>Reserves the decoded bytes a part fills, beyond those reserved ahead.</summary>
    void Reserve(long decoded)
    {
        long ahead = Math.Min(_reservedAhead, decoded);
        _reservedAhead -= ahead;
        if (decoded > ahead) reserve?.Invoke(decoded - ahead);
    }

    void StartScales(long length)
    {
        if (_scalesSeen) throw Invalid("scales sent twice");
        CheckShape();
        if (_meta.Compression != Compression.Int8Blockwise) throw new WireException($"{what}: scales are only allowed with INT8_BLOCKWISE");
        if (length != _blocks * 4)
            throw new WireException($"{what}: INT8_BLOCKWISE needs {_blocks} scales ({_blocks * 4} bytes), got {length} bytes");
        reserve?.Invoke(length);
        _scales = new byte[length];
        _scalesSeen = true;
        _field = WireTensor.ScalesFieldNumber;
    }

    void Expect(long actual, long expected)
    {
        if (actual != expected)
            throw new WireException($"{what}: {_meta.Compression} payload has {actual} bytes, shape needs {expected}");
    }

    void Consume(ReadOnlySpan<byte> part)
    {
        if (_field == WireTensor.ScalesFieldNumber) { part.CopyTo(_scales.AsSpan((int)_offset)); return; }
        if (_field != WireTensor.DataFieldNumber) return;
        var bytes = TensorSpan.Bytes(_result!);
        if (_meta.Dtype == DType.Int64 || _meta.Compression == Compression.None)
        {
            Reserve(part.Length);
            part.CopyTo(bytes[(int)_offset..]);
            return;
        }
        var dst = MemoryMarshal.Cast<byte, float>(bytes);
        if (_meta.Compression == Compression.Int8Blockwise)
        {
            Reserve(part.Length * 4L);
            int first = (int)_offset;
            for (int i = 0; i < part.Length; i++) dst[first + i] = (sbyte)part[i];
            if (_scalesReady) Scale(dst, first, first + part.Length);
            return;
        }
        Reserve(part.Length * 2L);
        bool bf16 = _meta.Compression == Compression.Bfloat16;
        long at = _offset;
        if ((at & 1) == 1)
        {
            dst[(int)(at / 2)] = Widen(_carry, part[0], bf16);
            part = part[1..];
            at++;
        }
        int index = (int)(at / 2), pairs = part.Length / 2;
        if (bf16)
            for (int i = 0; i < pairs; i++) dst[index + i] = BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(part[(i * 2)..]) << 16);
        else
            for (int i = 0; i < pairs; i++) dst[index + i] = (float)BinaryPrimitives.ReadHalfLittleEndian(part[(i * 2)..]);
        if ((part.Length & 1) == 1) _carry = part[^1];
    }

    static float Widen(byte low, byte high, bool bf16)
    {
        ushort bits = (ushort)(low | high << 8);
        return bf16 ? BitConverter.Int32BitsToSingle(bits << 16) : (float)BitConverter.UInt16BitsToHalf(bits);
    }

    void EndField()
    {
        if (_field != WireTensor.ScalesFieldNumber) return;
        var scales = _scales!.AsSpan();
        for (int b = 0; b < _blocks; b++)
        {
            float scale = BinaryPrimitives.ReadSingleLittleEndian(scales[(b * 4)..]);
            if (!float.IsFinite(scale) || scale < 0) throw new WireException($"{what}: block {b} has an invalid scale {scale}");
        }
        // Fields never overlap: codes that came first are all written and scaled now, later ones as they arrive.
        // Either way each value is one float multiply of its code, as in TensorCodec.Decode.
        if (_dataSeen) Scale(MemoryMarshal.Cast<byte, float>(TensorSpan.Bytes(_result!)), 0, (int)_elements);
        _scalesReady = true;
    }

    void Scale(Span<float> dst, int from, int to)
    {
        var scales = _scales.AsSpan();
        for (int i = from; i < to; i++) dst[i] *= BinaryPrimitives.ReadSingleLittleEndian(scales[(i / TensorCodec.BlockSize * 4)..]);
    }

    static bool TryVarint(ReadOnlySpan<byte> span, ref int pos, out ulong value)
    {
        value = 0;
        for (int shift = 0, p = pos; shift < 70; shift += 7)
        {
            if (p >= span.Length) return false;
            byte b = span[p++];
            value |= (ulong)(b & 0x7F) << shift;
            if (b < 0x80)
            {
                pos = p;
                return true;
            }
        }
        throw new WireException("malformed varint");
    }

    WireException Invalid(string why) => new($"tensor '{what}' is not a valid Tensor message: {why}");
}
