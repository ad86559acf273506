using System.Buffers.Binary;
using System.Text;
using PetalsSharp.Dht.V1;

namespace PetalsSharp.Dht;

/// <summary>Hard limits on what the wire may carry; anything beyond is refused before it costs memory or CPU.</summary>
public static class DhtLimits
{
    /// <summary>Longest record key, in UTF-8 bytes.</summary>
    public const int MaxKeyBytes = 256;

    /// <summary>Largest value of one entry.</summary>
    public const int MaxValueBytes = 64 * 1024;

    /// <summary>Largest DER public key accepted (a P-256 SubjectPublicKeyInfo is 91 bytes).</summary>
    public const int MaxPublicKeyBytes = 128;

    /// <summary>Records in one Store request.</summary>
    public const int MaxRecordsPerStore = 256;

    /// <summary>Contacts accepted from one FindNode/FindValue reply (more than k is refused).</summary>
    public const int MaxContactsPerReply = 64;

    /// <summary>Longest "host:port" address.</summary>
    public const int MaxAddressLength = 256;

    /// <summary>Entries in one FindValue reply are cut to this many bytes of values (the message limit is larger).</summary>
    public const int MaxReplyValueBytes = 8 * 1024 * 1024;

    /// <summary>Largest gRPC message either side accepts.</summary>
    public const int MaxMessageBytes = 16 * 1024 * 1024;

    /// <summary>Entries accepted in one FindValue reply (a node holds at most MaxSubkeysPerKey per key).</summary>
    public const int MaxEntriesPerReply = 1000;

    /// <summary>Clock difference tolerated between an owner and a storing node when checking MaxTtl.</summary>
    public static readonly TimeSpan ClockSkew = TimeSpan.FromMinutes(1);

    /// <summary>Nonce sizes a request may carry.</summary>
    public const int MinNonceBytes = 16, MaxNonceBytes = 64;
}

/// <summary>A verified entry as returned by <see cref="DhtNode.GetAsync"/>.</summary>
/// <param name="Subkey">The owner's node id in lowercase hex (= hash of <paramref name="PublicKey"/>).</param>
/// <param name="Value">The owner's opaque value.</param>
/// <param name="Expiration">When the entry stops being valid.</param>
/// <param name="PublicKey">The owner's DER public key, which signed the entry.</param>
public sealed record DhtEntry(string Subkey, byte[] Value, DateTimeOffset Expiration, byte[] PublicKey);

/// <summary>A signed entry as stored and exchanged: the <see cref="DhtEntry"/> fields plus the owner's signature.</summary>
public sealed record SignedEntry(string Key, string Subkey, byte[] Value, long ExpirationUnixMs, byte[] PublicKey, byte[] Signature)
{
    /// <summary>Bytes this entry costs in a node's storage budget (payload plus a fixed overhead).</summary>
    public long Size => Value.Length + PublicKey.Length + Signature.Length + Key.Length + Subkey.Length + 64;

    /// <summary>The public form.</summary>
    public DhtEntry ToEntry() => new(Subkey, Value, DateTimeOffset.FromUnixTimeMilliseconds(ExpirationUnixMs), PublicKey);

    /// <summary>True when both are the same signed bytes (a replica seen again needs no new verification).</summary>
    public bool SameAs(SignedEntry other) => ExpirationUnixMs == other.ExpirationUnixMs && Subkey == other.Subkey && Key == other.Key
        && Signature.AsSpan().SequenceEqual(other.Signature) && Value.AsSpan().SequenceEqual(other.Value)
        && PublicKey.AsSpan().SequenceEqual(other.PublicKey);

    public Entry ToWire() => new()
    {
        Subkey = Subkey,
        Value = Google.Protobuf.ByteString.CopyFrom(Value),
        ExpirationUnixMs = ExpirationUnixMs,
        PublicKey = Google.Protobuf.ByteString.CopyFrom(PublicKey),
        Signature = Google.Protobuf.ByteString.CopyFrom(Signature),
    };

    public static SignedEntry FromWire(string key, Entry e) =>
        new(key, e.Subkey, e.Value.ToByteArray(), e.ExpirationUnixMs, e.PublicKey.ToByteArray(), e.Signature.ToByteArray());
}

/// <summary>Signing and checking of records: the one place that decides whether an entry is believable.</summary>
public static class DhtRecords
{
    static readonly byte[] Domain = "petals-dht-record-v1\0"u8.ToArray();

    /// <summary>
    /// What the owner signs: a domain tag, then key, subkey and value each prefixed by their 32-bit big-endian
    /// length, then the expiration as a 64-bit big-endian integer. Length prefixes make the encoding unambiguous.
    /// </summary>
    public static byte[] CanonicalBytes(string key, string subkey, ReadOnlySpan<byte> value, long expirationUnixMs)
    {
        var k = Encoding.UTF8.GetBytes(key);
        var s = Encoding.UTF8.GetBytes(subkey);
        var buffer = new byte[Domain.Length + 4 + k.Length + 4 + s.Length + 4 + value.Length + 8];
        var span = buffer.AsSpan();
        Domain.CopyTo(span);
        int at = Domain.Length;
        foreach (var part in new[] { k, s })
        {
            BinaryPrimitives.WriteInt32BigEndian(span[at..], part.Length);
            part.CopyTo(span[(at + 4)..]);
            at += 4 + part.Length;
        }
        BinaryPrimitives.WriteInt32BigEndian(span[at..], value.Length);
        value.CopyTo(span[(at + 4)..]);
        at += 4 + value.Length;
        BinaryPrimitives.WriteInt64BigEndian(span[at..], expirationUnixMs);
        return buffer;
    }

    /// <summary>Makes this identity's entry for <paramref name="key"/> (subkey = its own id).</summary>
    public static SignedEntry Sign(NodeIdentity owner, string key, ReadOnlySpan<byte> value, DateTimeOffset expiration)
    {
        var subkey = owner.Id.ToString();
        long ms = expiration.ToUnixTimeMilliseconds();
        var signature = owner.Sign(CanonicalBytes(key, subkey, value, ms));
        return new SignedEntry(key, subkey, value.ToArray(), ms, owner.PublicKey, signature);
    }

    /// <summary>Checks a record key: non-empty, at most <see cref="DhtLimits.MaxKeyBytes"/> UTF-8 bytes, no control characters.</summary>
    public static string? CheckKey(string key)
    {
        if (string.IsNullOrEmpty(key)) return "empty key";
        if (Encoding.UTF8.GetByteCount(key) > DhtLimits.MaxKeyBytes) return $"key longer than {DhtLimits.MaxKeyBytes} bytes";
        foreach (var c in key)
            if (char.IsControl(c) || char.IsSurrogate(c)) return "key contains control or surrogate characters";
        return null;
    }

    /// <summary>
    /// Why an entry must not be believed, or null when it is fine: sizes, subkey = hash(public key), the signature,
    /// and an expiration that is in the future and at most <paramref name="maxTtl"/> ahead (null skips that bound,
    /// as readers do: a reader only needs the entry to be unexpired).
    /// </summary>
    public static string? Check(SignedEntry e, DateTimeOffset now, TimeSpan? maxTtl)
    {
        if (CheckKey(e.Key) is { } keyError) return keyError;
        if (e.Value.Length > DhtLimits.MaxValueBytes) return $"value of {e.Value.Length} bytes exceeds {DhtLimits.MaxValueBytes}";
        if (e.PublicKey.Length is 0 or > DhtLimits.MaxPublicKeyBytes) return "bad public key size";
        if (e.Signature.Length != 64) return "bad signature size";
        long nowMs = now.ToUnixTimeMilliseconds();
        if (e.ExpirationUnixMs <= nowMs) return "expired";
        if (maxTtl is { } ttl && e.ExpirationUnixMs > nowMs + (long)(ttl + DhtLimits.ClockSkew).TotalMilliseconds)
            return $"expiration more than {ttl} ahead";
        if (!NodeId.TryParse(e.Subkey, out var subkeyId) || e.Subkey != subkeyId.ToString()) return "subkey is not a lowercase hex node id";
        if (NodeId.FromPublicKey(e.PublicKey) != subkeyId) return "subkey is not the hash of the owner's public key";
        if (!NodeIdentity.Verify(e.PublicKey, CanonicalBytes(e.Key, e.Subkey, e.Value, e.ExpirationUnixMs), e.Signature)) return "bad signature";
        return null;
    }

    /// <summary>
    /// What a reader believes: per subkey, the valid unexpired entry with the latest expiration. Candidates are
    /// tried latest first, so only as many signatures are checked as needed.
    /// </summary>
    public static List<SignedEntry> MergeVerified(string key, IEnumerable<SignedEntry> candidates, DateTimeOffset now)
    {
        var result = new List<SignedEntry>();
        foreach (var group in candidates.Where(c => c.Key == key).GroupBy(c => c.Subkey))
        {
            var rejected = new List<SignedEntry>();
            foreach (var c in group.OrderByDescending(c => c.ExpirationUnixMs))
            {
                if (rejected.Any(r => r.SameAs(c))) continue;
                if (Check(c, now, maxTtl: null) is null) { result.Add(c); break; }
                rejected.Add(c);
            }
        }
        result.Sort((x, y) => string.CompareOrdinal(x.Subkey, y.Subkey));
        return result;
    }
}
