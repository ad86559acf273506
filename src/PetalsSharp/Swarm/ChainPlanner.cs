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

/// <summary>Pure chain choices over a snapshot of server spans.</summary>
public static class ChainPlanner
{
    /// <summary>
    /// A chain that covers <c>[start, end)</c> with as few hops as possible: from each block, the server that
    /// reaches furthest (ties go to the earlier-listed server). Throws when some block has no server.
    /// </summary>
    public static IReadOnlyList<ChainHop> FewestHops(IReadOnlyList<ServerSpan> servers, int start, int end)
    {
        if (start >= end) throw new ArgumentOutOfRangeException(nameof(start), $"empty block range [{start}, {end})");
        var chain = new List<ChainHop>();
        int block = start;
        while (block < end)
        {
            ServerSpan? best = null;
            foreach (var s in servers)
                if (s.Contains(block) && (best is null || s.End > best.End)) best = s;
            if (best is null)
                throw new SwarmException($"no server holds block {block} (known spans: {(servers.Count == 0 ? "none" : string.Join(" ", servers))})");
            var hopEnd = Math.Min(best.End, end);
            chain.Add(new ChainHop(best, block, hopEnd));
            block = hopEnd;
        }
        return chain;
    }

    /// <summary>The <c>route: ADDR[start:end] ...</c> line format.</summary>
    public static string Describe(IEnumerable<ChainHop> chain) => "route: " + string.Join(" ", chain);
}

/// <summary>The swarm cannot do what was asked: a block without servers, a server that misbehaves.</summary>
public sealed class SwarmException(string message, Exception? inner = null) : Exception(message, inner);
