using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace PetalsSharp.Wire;

/// <summary>
/// Where and how to dial a peer: <c>[http://|https://]HOST:PORT[/NODE_ID]</c>. TLS unless the scheme is
/// <c>http://</c>; with a node id, the peer must present a certificate whose key hashes to that id.
/// </summary>
/// <param name="Address">"host:port".</param>
/// <param name="Tls">Whether the link is TLS.</param>
/// <param name="ExpectedId">40 lowercase hex digits, or null when the caller knows no id (the link is encrypted but
/// anyone at the address passes).</param>
public sealed record PeerTarget(string Address, bool Tls, string? ExpectedId)
{
    /// <summary>Parses a dial string; a trailing "/X" that is not a 40-digit id is kept in the address (and fails to dial).</summary>
    public static PeerTarget Parse(string dial)
    {
        bool tls = true;
        if (dial.StartsWith("http://", StringComparison.OrdinalIgnoreCase)) { tls = false; dial = dial[7..]; }
        else if (dial.StartsWith("https://", StringComparison.OrdinalIgnoreCase)) dial = dial[8..];
        string? id = null;
        int slash = dial.LastIndexOf('/');
        if (slash >= 0 && PeerTls.IsId(dial[(slash + 1)..]))
        {
            id = dial[(slash + 1)..].ToLowerInvariant();
            dial = dial[..slash];
        }
        return new PeerTarget(dial.TrimEnd('/'), tls, id);
    }

    /// <summary>The dial string of <paramref name="address"/> over TLS or not, pinned to <paramref name="id"/> when known.</summary>
    public static string Dial(string address, bool tls, string? id = null) =>
        (tls ? "" : "http://") + address + (id is not null && PeerTls.IsId(id) ? "/" + id : "");

    public Uri Uri => new((Tls ? "https://" : "http://") + Address);
}

/// <summary>
/// TLS between peers. A node's certificate is self-signed with its DHT identity key, so the key the TLS handshake
/// proves is the key whose hash is the node id that signed the node's DHT records: the record's signer IS the
/// certificate's fingerprint, and a client that routed by a record accepts only that key at that address. No
/// certificate authority is involved; names and dates on the certificate mean nothing.
/// </summary>
public static class PeerTls
{
    /// <summary>Node ids are SHA-256 of the DER SubjectPublicKeyInfo, cut to 160 bits (as <c>NodeId.FromPublicKey</c>).</summary>
    public const int IdHexLength = 40;

    public static bool IsId(string text) => text.Length == IdHexLength && text.All(char.IsAsciiHexDigit);

    /// <summary>The node id (lowercase hex) of a DER SubjectPublicKeyInfo.</summary>
    public static string IdOfKey(ReadOnlySpan<byte> subjectPublicKeyInfo) =>
        Convert.ToHexStringLower(SHA256.HashData(subjectPublicKeyInfo).AsSpan(0, IdHexLength / 2));

    /// <summary>The node id a certificate's key stands for.</summary>
    public static string IdOf(X509Certificate certificate)
    {
        using var cert = new X509Certificate2(certificate);
        return IdOfKey(cert.PublicKey.ExportSubjectPublicKeyInfo());
    }

    /// <summary>A self-signed certificate on <paramref name="key"/> (which it does not own), valid for ten years.</summary>
    public static X509Certificate2 SelfSigned(ECDsa key)
    {
        var id = IdOfKey(key.ExportSubjectPublicKeyInfo());
        var request = new CertificateRequest($"CN=petals-{id}", key, HashAlgorithmName.SHA256);
        var now = DateTimeOffset.UtcNow;
        return request.CreateSelfSigned(now.AddDays(-1), now.AddYears(10));
    }

    /// <summary>
    /// Accepts the server's certificate only when its key is <paramref name="expectedId"/>'s (any key when null). A
    /// refusal throws, so that the caller's error says which node answered instead of "certificate rejected".
    /// </summary>
    public static RemoteCertificateValidationCallback Validator(string address, string? expectedId) => (_, certificate, _, _) =>
    {
        if (certificate is null) throw new AuthenticationException($"{address} presented no TLS certificate");
        if (expectedId is null) return true;
        string got;
        try { got = IdOf(certificate); }
        catch (CryptographicException e) { throw new AuthenticationException($"{address} presented an unreadable certificate: {e.Message}", e); }
        if (got != expectedId)
            throw new PeerIdentityException($"{address} is node {got}, not the expected {expectedId} (its TLS certificate " +
                "says so): refusing it; another host answers at that address, or the record that named it is forged");
        return true;
    };

    /// <summary>The identity refusal somewhere in <paramref name="error"/> (a gRPC status keeps it as its debug exception).</summary>
    public static PeerIdentityException? IdentityMismatch(Exception? error)
    {
        for (int depth = 0; error is not null && depth < 16; depth++)
        {
            if (error is PeerIdentityException found) return found;
            error = error is Grpc.Core.RpcException rpc ? rpc.Status.DebugException ?? rpc.InnerException : error.InnerException;
        }
        return null;
    }
}

/// <summary>A peer's TLS certificate is not on the key of the node id it was dialed as.</summary>
public sealed class PeerIdentityException(string message) : AuthenticationException(message);
