using PetalsSharp.Models;

namespace PetalsSharp.Generation;

/// <summary>
/// An inference session kept open between generations of a growing conversation (<see cref="GenerationOptions.Reuse"/>).
/// Its cache holds <see cref="Tokens"/>; a generation whose prompt starts with some of them sends only the rest, and
/// leaves the session holding its prompt and output. One generation at a time; the owner disposes it.
/// </summary>
public sealed class ReusableSession(IBlockSession session) : IAsyncDisposable
{
    readonly List<int> _tokens = [];

    public IBlockSession Session => session;

    /// <summary>The tokens whose keys and values the session's cache holds, in order.</summary>
    public IReadOnlyList<int> Tokens => _tokens;

    /// <summary>The longest generation (prompt and output) the session can hold.</summary>
    public int MaxLength => session.Options.MaxLength;

    /// <summary>When a generation last ran on it (UTC).</summary>
    public DateTime LastUsed { get; private set; } = DateTime.UtcNow;

    /// <summary>How many leading tokens of <paramref name="ids"/> the cache holds already.</summary>
    public int CommonPrefix(IReadOnlyList<int> ids)
    {
        int n = 0;
        while (n < _tokens.Count && n < ids.Count && _tokens[n] == ids[n]) n++;
        return n;
    }

    /// <summary>Records what the cache holds after a generation (anything else past it is rolled back by the next one).</summary>
    internal void Holds(IEnumerable<int> tokens)
    {
        _tokens.Clear();
        _tokens.AddRange(tokens);
        LastUsed = DateTime.UtcNow;
    }

    /// <summary>Forgets the cache's contents (after a failed step, when nothing about it can be trusted).</summary>
    internal void Forget() => _tokens.Clear();

    public ValueTask DisposeAsync() => session.DisposeAsync();
}
