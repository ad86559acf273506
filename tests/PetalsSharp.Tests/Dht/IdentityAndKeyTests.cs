using PetalsSharp.Dht;
using Xunit;

namespace PetalsSharp.Tests.Dht;

[Collection(DhtSocketsCollection.Name)]
public sealed class IdentityAndKeyTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("petals-dht-id-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public async Task IdentityFileKeepsTheNodeIdAcrossRestarts()
    {
        var path = Path.Combine(_dir, "sub", "node.id");
        NodeId first;
        using (var identity = NodeIdentity.LoadOrCreate(path))
        {
            await using var node = await DhtNode.StartAsync(DhtTestSwarm.Options() with { Identity = identity });
            first = node.Id;
        }
        Assert.True(File.Exists(path));
        if (!OperatingSystem.IsWindows())
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
        using var again = NodeIdentity.LoadOrCreate(path);
        await using var restarted = await DhtNode.StartAsync(DhtTestSwarm.Options() with { Identity = again });
        Assert.Equal(first, restarted.Id);
        Assert.NotEqual(first, NodeIdentity.CreateEphemeral().Id);
    }

    [Fact]
    public void CorruptIdentityFileIsAClearError()
    {
        var path = Path.Combine(_dir, "bad.id");
        File.WriteAllText(path, "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n");
        var e = Assert.Throws<InvalidDataException>(() => NodeIdentity.LoadOrCreate(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("not a PEM ECDSA P-256 private key", e.Message);
        // A public key alone cannot sign: refused too, and the file is left as it was.
        using var other = NodeIdentity.CreateEphemeral();
        var publicOnly = Path.Combine(_dir, "public.id");
        File.WriteAllText(publicOnly, System.Security.Cryptography.PemEncoding.WriteString("PUBLIC KEY", other.PublicKey));
        Assert.Throws<InvalidDataException>(() => NodeIdentity.LoadOrCreate(publicOnly));
        Assert.StartsWith("-----BEGIN PUBLIC KEY", File.ReadAllText(publicOnly));
    }

    [Fact]
    public void SwarmKeyFileFormats()
    {
        var key = SwarmKey.Generate();
        var hex = key.ToText();
        var proof = key.CreateRequestProof("/m", DateTimeOffset.UtcNow);
        Assert.True(SwarmKey.Parse(hex).VerifyRequestProof("/m", proof, DateTimeOffset.UtcNow));
        Assert.True(SwarmKey.Parse($"# our swarm\n{hex[..32]}\n  {hex[32..]}\n").VerifyRequestProof("/m", proof, DateTimeOffset.UtcNow));
        var base64 = Convert.ToBase64String(Convert.FromHexString(hex));
        Assert.True(SwarmKey.Parse(base64).VerifyRequestProof("/m", proof, DateTimeOffset.UtcNow));
        Assert.False(SwarmKey.Generate().VerifyRequestProof("/m", proof, DateTimeOffset.UtcNow));
        Assert.False(key.VerifyRequestProof("/other", proof, DateTimeOffset.UtcNow));
        Assert.False(key.VerifyRequestProof("/m", proof, DateTimeOffset.UtcNow.AddMinutes(6)));
        Assert.Throws<InvalidDataException>(() => SwarmKey.Parse("00112233"));
        Assert.Throws<InvalidDataException>(() => SwarmKey.Parse(""));
        Assert.Throws<InvalidDataException>(() => SwarmKey.Parse("$$$ not a key $$$"));
        var reply = key.CreateReplyProof(proof);
        Assert.True(key.VerifyReplyProof(proof, reply));
        Assert.False(key.VerifyReplyProof(key.CreateRequestProof("/m", DateTimeOffset.UtcNow), reply));
    }
}
