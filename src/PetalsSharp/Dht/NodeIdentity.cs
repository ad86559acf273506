using System.Security.Cryptography;

namespace PetalsSharp.Dht;

/// <summary>
/// A node's ECDSA P-256 key pair. The node id is derived from the public key, so keeping the key file keeps the id
/// across restarts (bootstrap addresses "host:port/ID" stay valid).
/// </summary>
public sealed class NodeIdentity : IDisposable
{
    readonly ECDsa _key;

    NodeIdentity(ECDsa key)
    {
        _key = key;
        PublicKey = key.ExportSubjectPublicKeyInfo();
        Id = NodeId.FromPublicKey(PublicKey);
    }

    /// <summary>The node id: SHA-256 of <see cref="PublicKey"/>, cut to 160 bits.</summary>
    public NodeId Id { get; }

    /// <summary>DER SubjectPublicKeyInfo of the public key, as sent on the wire.</summary>
    public byte[] PublicKey { get; }

    /// <summary>
    /// A self-signed TLS certificate on this key, so that a peer's handshake proves the node id (see
    /// <see cref="Wire.PeerTls"/>).
    /// </summary>
    public System.Security.Cryptography.X509Certificates.X509Certificate2 CreateCertificate() => Wire.PeerTls.SelfSigned(_key);

    /// <summary>A fresh key that lives only in memory.</summary>
    public static NodeIdentity CreateEphemeral() => new(ECDsa.Create(ECCurve.NamedCurves.nistP256));

    /// <summary>
    /// Loads the PKCS#8 PEM private key at <paramref name="path"/>, or creates it (readable by the owner only) when
    /// the file does not exist. A file that is not a P-256 private key is an error, never silently replaced.
    /// </summary>
    public static NodeIdentity LoadOrCreate(string path)
    {
        if (File.Exists(path)) return Load(path);
        var identity = CreateEphemeral();
        var pem = identity._key.ExportPkcs8PrivateKeyPem();
        var dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (!string.IsNullOrEmpty(dir)) Directory.CreateDirectory(dir);
        // Written to a private temporary file and moved into place, so a crash never leaves a half-written key and
        // the key is never readable by others, not even for a moment.
        var tmp = $"{path}.tmp-{Environment.ProcessId}-{Guid.NewGuid():N}";
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows()) options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        try
        {
            using (var writer = new StreamWriter(new FileStream(tmp, options))) writer.Write(pem);
            File.Move(tmp, path, overwrite: false);
        }
        catch (IOException) when (File.Exists(path))
        {
            // Another process created it first: use theirs so both agree on the id.
            File.Delete(tmp);
            identity.Dispose();
            return Load(path);
        }
        return identity;
    }

    static NodeIdentity Load(string path)
    {
        string text;
        try { text = File.ReadAllText(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new InvalidDataException($"cannot read identity file {path}: {e.Message}", e);
        }
        var key = ECDsa.Create();
        try
        {
            key.ImportFromPem(text);
            if (key.KeySize != 256 || key.ExportParameters(false).Curve.Oid.Value != ECCurve.NamedCurves.nistP256.Oid.Value)
                throw new InvalidDataException("not a P-256 key");
            // ImportFromPem also accepts a bare public key; signing needs the private part.
            key.ExportECPrivateKey();
            return new NodeIdentity(key);
        }
        catch (Exception e) when (e is ArgumentException or CryptographicException or InvalidDataException)
        {
            key.Dispose();
            throw new InvalidDataException(
                $"identity file {path} is not a PEM ECDSA P-256 private key ({e.Message}); fix it or delete it to create a new identity (a new node id)", e);
        }
    }

    /// <summary>Signs <paramref name="data"/> (ECDSA over SHA-256, 64-byte IEEE P1363 signature). Thread-safe.</summary>
    public byte[] Sign(ReadOnlySpan<byte> data)
    {
        // Every gRPC reply is signed, from many threads; ECDsa instances are not documented as thread-safe.
        lock (_key) return _key.SignData(data, HashAlgorithmName.SHA256, DSASignatureFormat.IeeeP1363FixedFieldConcatenation);
    }

    /// <summary>
    /// Checks a signature made by the holder of <paramref name="publicKey"/>; false for anything malformed (a key that
    /// is not P-256, a signature of the wrong length) rather than throwing, because the inputs come from the wire.
    /// </summary>
    public static bool Verify(ReadOnlySpan<byte> publicKey, ReadOnlySpan<byte> data, ReadOnlySpan<byte> signature)
    {
        if (signature.Length != 64 || publicKey.Length is 0 or > DhtLimits.MaxPublicKeyBytes) return false;
        try
        {
            using var key = ECDsa.Create();
            key.ImportSubjectPublicKeyInfo(publicKey, out int read);
            if (read != publicKey.Length || key.KeySize != 256) return false;
            return key.VerifyData(data, signature, HashAlgorithmName.SHA256, DSASignatureFormat.IeeeP1363FixedFieldConcatenation);
        }
        catch (CryptographicException)
        {
            return false;
        }
    }

    public void Dispose() => _key.Dispose();
}
