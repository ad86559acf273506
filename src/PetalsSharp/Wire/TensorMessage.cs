using Google.Protobuf;
using WireTensor = PetalsSharp.Wire.V1.Tensor;

namespace PetalsSharp.Wire;

/// <summary>
/// Parses a serialized <c>Tensor</c> whose data and scales stay views of the given bytes. Google.Protobuf copies
/// every bytes field it parses, so a received tensor would otherwise be held twice (the assembled buffer and the
/// parsed message) until it is decoded, a third time; this reader makes the buffer the only copy.
/// </summary>
public static class TensorMessage
{
    /// <summary>More dimensions than any tensor we accept (the codec allows 8); stops a shape of millions of entries.</summary>
    const int MaxShapeEntries = 16;

    /// <summary>Parses <paramref name="bytes"/>; the result aliases them, so they must not change afterwards.</summary>
    public static WireTensor ParseWithoutCopy(ReadOnlyMemory<byte> bytes, string what)
    {
        var t = new WireTensor();
        var span = bytes.Span;
        int pos = 0;
        while (pos < span.Length)
        {
            ulong tag = Varint(span, ref pos, what);
            int field = (int)(tag >> 3), wire = (int)(tag & 7);
            switch (field, wire)
            {
                case (WireTensor.ShapeFieldNumber, 0):
                    AddDimension(t, (long)Varint(span, ref pos, what), what);
                    break;
                case (WireTensor.ShapeFieldNumber, 2):
                {
                    int length = Length(span, ref pos, what);
                    int end = pos + length;
                    while (pos < end) AddDimension(t, (long)Varint(span[..end], ref pos, what), what);
                    break;
                }
                case (WireTensor.DtypeFieldNumber, 0): t.Dtype = (V1.DType)(int)Varint(span, ref pos, what); break;
                case (WireTensor.CompressionFieldNumber, 0): t.Compression = (V1.Compression)(int)Varint(span, ref pos, what); break;
                case (WireTensor.DataFieldNumber, 2):
                {
                    int length = Length(span, ref pos, what);
                    t.Data = UnsafeByteOperations.UnsafeWrap(bytes.Slice(pos, length));
                    pos += length;
                    break;
                }
                case (WireTensor.ScalesFieldNumber, 2):
                {
                    int length = Length(span, ref pos, what);
                    t.Scales = UnsafeByteOperations.UnsafeWrap(bytes.Slice(pos, length));
                    pos += length;
                    break;
                }
                default:
                    Skip(span, ref pos, field, wire, what);
                    break;
            }
        }
        return t;
    }

    static void AddDimension(WireTensor t, long d, string what)
    {
        if (t.Shape.Count >= MaxShapeEntries) throw Invalid(what, $"more than {MaxShapeEntries} dimensions");
        t.Shape.Add(d);
    }

    /// <summary>Unknown fields are skipped, as Google.Protobuf would (a newer peer may add some).</summary>
    static void Skip(ReadOnlySpan<byte> span, ref int pos, int field, int wire, string what)
    {
        if (field == 0) throw Invalid(what, "field number 0");
        switch (wire)
        {
            case 0: Varint(span, ref pos, what); break;
            case 1: pos = Advance(span, pos, 8, what); break;
            case 2: { int length = Length(span, ref pos, what); pos += length; break; }
            case 5: pos = Advance(span, pos, 4, what); break;
            default: throw Invalid(what, $"wire type {wire} in field {field}");
        }
    }

    static int Advance(ReadOnlySpan<byte> span, int pos, int count, string what) =>
        span.Length - pos >= count ? pos + count : throw Invalid(what, "truncated");

    /// <summary>A length prefix, checked against the bytes that remain.</summary>
    static int Length(ReadOnlySpan<byte> span, ref int pos, string what)
    {
        ulong length = Varint(span, ref pos, what);
        if (length > (ulong)(span.Length - pos)) throw Invalid(what, $"a field of {length} bytes runs past the end");
        return (int)length;
    }

    static ulong Varint(ReadOnlySpan<byte> span, ref int pos, string what)
    {
        ulong value = 0;
        for (int shift = 0; shift < 70; shift += 7)
        {
            if (pos >= span.Length) throw Invalid(what, "truncated varint");
            byte b = span[pos++];
            value |= (ulong)(b & 0x7F) << shift;
            if (b < 0x80) return value;
        }
        throw Invalid(what, "malformed varint");
    }

    static WireException Invalid(string what, string why) => new($"tensor '{what}' is not a valid Tensor message: {why}");
}
