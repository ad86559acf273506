namespace PetalsSharp.Swarm;

/// <summary>A server's place in the model: it serves blocks <c>[Start, End)</c>.</summary>
public sealed record ServerSpan(string Address, int Start, int End)
{
    public int Length => End - Start;
    public bool Contains(int block) => block >= Start && block < End;
    public override string ToString() => $"{Address}[{Start}:{End}]";
}

/// <summary>One hop of a chain: a server and the blocks it runs for this request.</summary>
public sealed record ChainHop(ServerSpan Server, int Start, int End)
{
    public override string ToString() => $"{Server.Address}[{Start}:{End}]";
}

/// <summary>How a chain is written; the choice itself is <see cref="RoutePlanner"/>'s.</summary>
public static class ChainPlanner
{
    /// <summary>The <c>route: ADDR[start:end] ...</c> line format.</summary>
    public static string Describe(IEnumerable<ChainHop> chain) => "route: " + string.Join(" ", chain);
}

/// <summary>The swarm cannot do what was asked: a block without servers, a server that misbehaves.</summary>
public sealed class SwarmException(string message, Exception? inner = null) : Exception(message, inner);
