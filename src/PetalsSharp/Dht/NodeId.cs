using System.Buffers.Binary;
using System.Numerics;
using System.Security.Cryptography;
using System.Text;

namespace PetalsSharp.Dht;

/// <summary>
/// A 160-bit Kademlia identifier: a node's id (first 20 bytes of SHA-256 of its public key) or a key's id (of the
/// key's UTF-8 bytes). Held as three integers so equality, hashing and XOR are allocation-free.
/// </summary>
public readonly record struct NodeId : IComparable<NodeId>
{
    /// <summary>Bytes in an id.</summary>
    public const int Length = 20;

    /// <summary>Bits in an id, and so the number of k-buckets.</summary>
    public const int Bits = Length * 8;

    readonly ulong _a, _b;
    readonly uint _c;

    NodeId(ulong a, ulong b, uint c) => (_a, _b, _c) = (a, b, c);

    /// <summary>An id from exactly 20 big-endian bytes.</summary>
    public static NodeId FromBytes(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length != Length) throw new ArgumentException($"a node id is {Length} bytes, got {bytes.Length}");
        return new(BinaryPrimitives.ReadUInt64BigEndian(bytes), BinaryPrimitives.ReadUInt64BigEndian(bytes[8..]),
            BinaryPrimitives.ReadUInt32BigEndian(bytes[16..]));
    }

    /// <summary>Parses 40 hex digits (either case).</summary>
    public static NodeId Parse(string hex)
    {
        if (!TryParse(hex, out var id)) throw new FormatException($"'{hex}' is not a node id (40 hex digits)");
        return id;
    }

    /// <summary>Parses 40 hex digits without throwing.</summary>
    public static bool TryParse(string? hex, out NodeId id)
    {
        id = default;
        if (hex is null || hex.Length != Length * 2) return false;
        Span<byte> bytes = stackalloc byte[Length];
        if (Convert.FromHexString(hex, bytes, out _, out int written) != System.Buffers.OperationStatus.Done || written != Length)
            return false;
        id = FromBytes(bytes);
        return true;
    }

    /// <summary>The id of a public key (DER SubjectPublicKeyInfo): its SHA-256 cut to 160 bits.</summary>
    public static NodeId FromPublicKey(ReadOnlySpan<byte> subjectPublicKeyInfo) => FromBytes(SHA256.HashData(subjectPublicKeyInfo).AsSpan(0, Length));

    /// <summary>Where a record key lives in the id space: SHA-256 of its UTF-8 bytes, cut to 160 bits.</summary>
    public static NodeId ForKey(string key) => FromBytes(SHA256.HashData(Encoding.UTF8.GetBytes(key)).AsSpan(0, Length));

    /// <summary>A uniformly random id (bucket refresh, tests).</summary>
    public static NodeId Random() => FromBytes(RandomNumberGenerator.GetBytes(Length));

    /// <summary>A random id whose distance from <paramref name="origin"/> falls in bucket <paramref name="bucket"/>.</summary>
    public static NodeId RandomInBucket(NodeId origin, int bucket)
    {
        if (bucket is < 0 or >= Bits) throw new ArgumentOutOfRangeException(nameof(bucket));
        Span<byte> d = stackalloc byte[Length];
        RandomNumberGenerator.Fill(d);
        // Distance with its highest set bit at position `bucket`: clear everything above, set that bit.
        int byteIndex = Length - 1 - bucket / 8, bit = bucket % 8;
        for (int i = 0; i < byteIndex; i++) d[i] = 0;
        d[byteIndex] = (byte)((d[byteIndex] & ((1 << bit) - 1)) | (1 << bit));
        return origin.Xor(FromBytes(d));
    }

    /// <summary>The XOR metric: the distance between two ids, itself an id compared as a 160-bit number.</summary>
    public NodeId Xor(NodeId other) => new(_a ^ other._a, _b ^ other._b, _c ^ other._c);

    /// <summary>
    /// The k-bucket <paramref name="other"/> belongs to as seen from this id: the position of the highest bit of
    /// their distance (0 = the closest half-bit, 159 = the farther half of the space), or -1 for the same id.
    /// </summary>
    public int BucketIndex(NodeId other)
    {
        var d = Xor(other);
        if (d._a != 0) return Bits - 1 - BitOperations.LeadingZeroCount(d._a);
        if (d._b != 0) return Bits - 65 - BitOperations.LeadingZeroCount(d._b);
        if (d._c != 0) return 31 - BitOperations.LeadingZeroCount(d._c);
        return -1;
    }

    /// <summary>Orders ids as unsigned 160-bit numbers, so <c>a.Xor(t).CompareTo(b.Xor(t))</c> orders by distance.</summary>
    public int CompareTo(NodeId other) => _a != other._a ? _a.CompareTo(other._a) : _b != other._b ? _b.CompareTo(other._b) : _c.CompareTo(other._c);

    /// <summary>Compares the distances of two ids from this one.</summary>
    public int CompareDistance(NodeId x, NodeId y) => Xor(x).CompareTo(Xor(y));

    /// <summary>The 20 big-endian bytes.</summary>
    public byte[] ToBytes()
    {
        var bytes = new byte[Length];
        BinaryPrimitives.WriteUInt64BigEndian(bytes, _a);
        BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(8), _b);
        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(16), _c);
        return bytes;
    }

    /// <summary>40 lowercase hex digits: the form used in addresses ("host:port/ID") and as record subkeys.</summary>
    public override string ToString() => Convert.ToHexStringLower(ToBytes());
}
