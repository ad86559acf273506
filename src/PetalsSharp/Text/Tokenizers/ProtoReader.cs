using System.Buffers.Binary;

namespace PetalsSharp.Text.Tokenizers;

/// <summary>
/// Just enough of the protobuf wire format to read SentencePiece model files, whose pieces and scores
/// Microsoft.ML.Tokenizers does not expose.
/// </summary>
internal sealed class ProtoReader(byte[] data)
{
    private int _pos;

    /// <summary>Reads the next field tag; false at the end of the message.</summary>
    public bool Next(out int field, out int wireType)
    {
        if (_pos >= data.Length)
        {
            field = 0;
            wireType = 0;
            return false;
        }

        ulong tag = ReadVarint();
        field = (int)(tag >> 3);
        wireType = (int)(tag & 7);
        return true;
    }

    public ulong ReadVarint()
    {
        ulong value = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            byte b = data[Check(1)];
            _pos++;
            value |= (ulong)(b & 0x7F) << shift;
            if (b < 0x80)
            {
                return value;
            }
        }

        throw new InvalidDataException("Malformed protobuf varint.");
    }

    public byte[] ReadBytes()
    {
        int length = checked((int)ReadVarint());
        int at = Check(length);
        _pos += length;
        return data.AsSpan(at, length).ToArray();
    }

    public float ReadFloat()
    {
        int at = Check(4);
        _pos += 4;
        return BinaryPrimitives.ReadSingleLittleEndian(data.AsSpan(at, 4));
    }

    public void Skip(int wireType)
    {
        switch (wireType)
        {
            case 0:
                ReadVarint();
                break;
            case 1:
                _pos = Check(8) + 8;
                break;
            case 2:
                ReadBytes();
                break;
            case 5:
                _pos = Check(4) + 4;
                break;
            default:
                throw new InvalidDataException($"Unsupported protobuf wire type {wireType}.");
        }
    }

    private int Check(int count)
    {
        if (count < 0 || _pos + count > data.Length)
        {
            throw new InvalidDataException("Truncated protobuf message.");
        }

        return _pos;
    }
}
