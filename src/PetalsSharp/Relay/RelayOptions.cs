namespace PetalsSharp.Relay;

/// <summary>Limits of a relay (<c>petals dht --relay</c>, <c>petals server --relay</c>): what one volunteer's bandwidth carries for others.</summary>
public sealed record RelayOptions
{
    /// <summary>Servers registered at once; a registration past it gets RESOURCE_EXHAUSTED.</summary>
    public int MaxServers { get; init; } = 32;

    /// <summary>Concurrent client connections per registered server; a connection past it is closed at once.</summary>
    public int MaxConnectionsPerServer { get; init; } = 64;

    /// <summary>Bytes per second relayed for one server, both directions together (a token bucket one second deep).</summary>
    public long MaxBytesPerSecondPerServer { get; init; } = 32L * 1024 * 1024;

    /// <summary>How long a client connection waits for the server to take it (its Tunnel call) before it is closed.</summary>
    public TimeSpan TunnelTimeout { get; init; } = TimeSpan.FromSeconds(15);

    public void Validate()
    {
        if (MaxServers < 1) throw new ArgumentException($"--relay-max-servers must be at least 1 (got {MaxServers})");
        if (MaxConnectionsPerServer < 1) throw new ArgumentException($"--relay-max-connections must be at least 1 (got {MaxConnectionsPerServer})");
        if (MaxBytesPerSecondPerServer < 64 * 1024)
            throw new ArgumentException($"--relay-bytes-per-second must be at least 65536 (got {MaxBytesPerSecondPerServer})");
    }
}
