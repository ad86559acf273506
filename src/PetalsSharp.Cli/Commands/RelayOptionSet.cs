using System.CommandLine;
using PetalsSharp.Relay;

namespace PetalsSharp.Cli.Commands;

/// <summary>The relay options <c>petals dht</c> and <c>petals server</c> share: run a relay for servers behind NAT, within limits.</summary>
internal sealed class RelayOptionSet
{
    static readonly RelayOptions Defaults = new();

    public Option<bool> Relay { get; } = new("--relay")
    {
        Description = "Relay for servers behind NAT: they register here and clients reach them through this node (TLS stays end to end)",
    };

    public Option<int> MaxServers { get; } = new("--relay-max-servers")
    {
        Description = "Servers relayed at once", DefaultValueFactory = _ => Defaults.MaxServers,
    };

    public Option<int> MaxConnections { get; } = new("--relay-max-connections")
    {
        Description = "Concurrent client connections per relayed server", DefaultValueFactory = _ => Defaults.MaxConnectionsPerServer,
    };

    public Option<long> BytesPerSecond { get; } = new("--relay-bytes-per-second")
    {
        Description = "Bytes per second relayed for one server, both directions together (traffic over it waits)",
        DefaultValueFactory = _ => Defaults.MaxBytesPerSecondPerServer,
    };

    public void AddTo(Command cmd)
    {
        cmd.Options.Add(Relay);
        cmd.Options.Add(MaxServers);
        cmd.Options.Add(MaxConnections);
        cmd.Options.Add(BytesPerSecond);
    }

    /// <summary>The relay's limits, or null without <c>--relay</c>.</summary>
    /// <exception cref="CliException">A limit is out of range.</exception>
    public RelayOptions? Parse(ParseResult pr)
    {
        if (!pr.GetValue(Relay)) return null;
        var options = new RelayOptions
        {
            MaxServers = pr.GetValue(MaxServers), MaxConnectionsPerServer = pr.GetValue(MaxConnections),
            MaxBytesPerSecondPerServer = pr.GetValue(BytesPerSecond),
        };
        try { options.Validate(); }
        catch (ArgumentException e) { throw new CliException(e.Message); }
        return options;
    }
}
