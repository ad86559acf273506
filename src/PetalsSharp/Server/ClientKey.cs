using System.Net;

namespace PetalsSharp.Server;

/// <summary>
/// Who a caller is, for per-client limits: its IP address, not its connection. A connection costs an attacker
/// nothing (a new channel is a new connection, with a new port), while addresses are scarce; the price is that
/// honest clients behind one NAT share one limit, which is why limits keyed here are shares, not whole budgets.
/// An IPv6 caller is keyed by its /64, since a single host is usually handed a whole /64.
/// </summary>
public static class ClientKey
{
    /// <summary>The key of a caller whose address is unknown (not TCP): all such callers count as one.</summary>
    public const string Unknown = "unknown";

    /// <summary>The key of a gRPC peer string: <c>ipv4:1.2.3.4:5678</c>, <c>ipv6:[::1]:5678</c>, anything else is <see cref="Unknown"/>.</summary>
    public static string FromPeer(string? peer)
    {
        if (peer is null) return Unknown;
        int colon = peer.IndexOf(':');
        int port = peer.LastIndexOf(':');
        if (colon < 0 || port <= colon || !peer.StartsWith("ipv", StringComparison.Ordinal)) return Unknown;
        var host = peer.AsSpan(colon + 1, port - colon - 1).Trim('[').Trim(']');
        return IPAddress.TryParse(host, out var address) ? Of(address) : Unknown;
    }

    /// <summary>The key of an address: IPv4 (also when mapped into IPv6) as itself, IPv6 as its /64.</summary>
    public static string Of(IPAddress address)
    {
        if (address.IsIPv4MappedToIPv6) address = address.MapToIPv4();
        if (address.AddressFamily != System.Net.Sockets.AddressFamily.InterNetworkV6) return address.ToString();
        var bytes = address.GetAddressBytes();
        Array.Clear(bytes, 8, 8);
        return new IPAddress(bytes) + "/64";
    }
}
