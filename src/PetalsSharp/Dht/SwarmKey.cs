using System.Globalization;
using System.Security.Cryptography;
using System.Text;

namespace PetalsSharp.Dht;

/// <summary>
/// The shared secret of a private swarm. Every gRPC call between members carries an HMAC-SHA256 proof of it, and
/// every reply proves it back, so outsiders can neither use the swarm nor pose as part of it.
/// </summary>
/// <remarks>
/// File format (<c>--swarm-key FILE</c>): text holding at least 32 random bytes as hex (64+ hex digits) or as
/// base64. Blank lines and lines starting with '#' are ignored; whitespace is removed. Make one with
/// <c>openssl rand -hex 32 &gt; swarm.key</c> and give the same file to every member.
/// </remarks>
public sealed class SwarmKey
{
    /// <summary>Fewest secret bytes accepted.</summary>
    public const int MinBytes = 32;

    /// <summary>How far a proof's timestamp may be from the verifier's clock.</summary>
    public static readonly TimeSpan ClockWindow = TimeSpan.FromMinutes(5);

    readonly byte[] _secret;

    SwarmKey(byte[] secret) => _secret = secret;

    /// <summary>A key from raw secret bytes (at least <see cref="MinBytes"/>).</summary>
    public static SwarmKey FromBytes(ReadOnlySpan<byte> secret)
    {
        if (secret.Length < MinBytes) throw new ArgumentException($"a swarm key needs at least {MinBytes} bytes, got {secret.Length}");
        return new SwarmKey(secret.ToArray());
    }

    /// <summary>A new random key.</summary>
    public static SwarmKey Generate() => new(RandomNumberGenerator.GetBytes(MinBytes));

    /// <summary>The file text for this key (hex).</summary>
    public string ToText() => Convert.ToHexStringLower(_secret);

    /// <summary>Parses the file format described on <see cref="SwarmKey"/>.</summary>
    public static SwarmKey Parse(string text)
    {
        var body = string.Concat(text.Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')))
            .Replace(" ", "").Replace("\t", "").Replace("\r", "");
        if (body.Length == 0) throw new InvalidDataException("swarm key is empty (expected at least 32 bytes as hex or base64)");
        byte[] bytes;
        if (body.Length % 2 == 0 && body.All(Uri.IsHexDigit)) bytes = Convert.FromHexString(body);
        else
        {
            try { bytes = Convert.FromBase64String(body); }
            catch (FormatException) { throw new InvalidDataException("swarm key is neither hex nor base64"); }
        }
        if (bytes.Length < MinBytes) throw new InvalidDataException($"swarm key has {bytes.Length} bytes; at least {MinBytes} are required");
        return new SwarmKey(bytes);
    }

    /// <summary>Reads and parses a swarm key file.</summary>
    public static SwarmKey Load(string path)
    {
        try { return Parse(File.ReadAllText(path)); }
        catch (InvalidDataException e) { throw new InvalidDataException($"{path}: {e.Message}", e); }
    }

    /// <summary>
    /// The request proof for <paramref name="method"/>: "v1.TIMESTAMP_MS.NONCE_HEX.MAC_HEX", MAC = HMAC-SHA256 over
    /// "req", method, timestamp and nonce. The random nonce makes each proof unique, which the reply proof binds to.
    /// </summary>
    public string CreateRequestProof(string method, DateTimeOffset now)
    {
        var ts = now.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture);
        var nonce = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16));
        return $"v1.{ts}.{nonce}.{Mac($"req\n{method}\n{ts}\n{nonce}")}";
    }

    /// <summary>Checks a request proof for <paramref name="method"/> against the clock window.</summary>
    public bool VerifyRequestProof(string method, string? proof, DateTimeOffset now)
    {
        if (proof is null || proof.Length > 256) return false;
        var parts = proof.Split('.');
        if (parts.Length != 4 || parts[0] != "v1" || !long.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out long ts)) return false;
        if (Math.Abs(now.ToUnixTimeMilliseconds() - ts) > (long)ClockWindow.TotalMilliseconds) return false;
        return FixedEquals(parts[3], Mac($"req\n{method}\n{parts[1]}\n{parts[2]}"));
    }

    /// <summary>The reply proof: HMAC over "resp" and the request's proof, so it cannot be replayed for another call.</summary>
    public string CreateReplyProof(string requestProof) => "v1." + Mac($"resp\n{requestProof}");

    /// <summary>Checks a reply proof against the request proof this side sent.</summary>
    public bool VerifyReplyProof(string requestProof, string? replyProof) =>
        replyProof is not null && replyProof.Length <= 256 && FixedEquals(replyProof, CreateReplyProof(requestProof));

    string Mac(string message) => Convert.ToHexStringLower(HMACSHA256.HashData(_secret, Encoding.UTF8.GetBytes(message)));

    static bool FixedEquals(string a, string b) =>
        CryptographicOperations.FixedTimeEquals(Encoding.ASCII.GetBytes(a), Encoding.ASCII.GetBytes(b));
}
