using PetalsSharp.Generation;
using PetalsSharp.Models;

namespace PetalsSharp.Api.Chat;

/// <summary>
/// Finished generations' inference sessions, kept open for a while so that the next turn of the same chat sends only
/// its new tokens: a request takes the session whose cache shares the longest prefix with its prompt (or a new one),
/// and gives it back when done. Bounded by <paramref name="capacity"/> sessions (the least recently used go first) and
/// by <paramref name="idle"/> time; each holds at most its prompt, output and <paramref name="headroom"/> positions.
/// </summary>
public sealed class ChatSessionCache(CausalLM model, int capacity = 4, TimeSpan? idle = null, int headroom = 512) : IAsyncDisposable
{
    readonly List<ReusableSession> _idle = [];
    readonly TimeSpan _idleTime = idle ?? TimeSpan.FromMinutes(2);
    readonly object _lock = new();
    Timer? _sweeper;
    bool _disposed;

    /// <summary>Sessions waiting for their chat's next turn.</summary>
    public int Count { get { lock (_lock) return _idle.Count; } }

    /// <summary>
    /// The idle session whose cache shares the most leading tokens with <paramref name="prompt"/> and can hold
    /// <paramref name="needed"/> positions, taken out of the cache; or a new one sized for the request plus headroom.
    /// </summary>
    public ReusableSession Take(IReadOnlyList<int> prompt, int needed)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _sweeper ??= new Timer(_ => Sweep(), null, _idleTime / 4, _idleTime / 4);
            ReusableSession? best = null;
            int bestCommon = 0;
            foreach (var s in _idle)
            {
                int common = s.CommonPrefix(prompt);
                if (common > bestCommon && s.MaxLength >= needed) (best, bestCommon) = (s, common);
            }
            if (best is not null)
            {
                _idle.Remove(best);
                return best;
            }
        }
        int length = Math.Min(model.Config.MaxPositionEmbeddings, needed + headroom);
        return new ReusableSession(model.Blocks.OpenSession(new SessionOptions(1, Math.Max(length, needed))));
    }

    /// <summary>Keeps <paramref name="session"/> for the next turn; the least recently used beyond capacity are closed.</summary>
    public void Return(ReusableSession session)
    {
        List<ReusableSession> evicted;
        lock (_lock)
        {
            if (_disposed || session.Tokens.Count == 0)
            {
                _ = session.DisposeAsync().AsTask();
                return;
            }
            _idle.Add(session);
            evicted = _idle.OrderByDescending(s => s.LastUsed).Skip(capacity).ToList();
            foreach (var s in evicted) _idle.Remove(s);
        }
        foreach (var s in evicted) _ = s.DisposeAsync().AsTask();
    }

    /// <summary>Closes a session that failed: its cache and its servers can no longer be trusted.</summary>
    public static ValueTask DiscardAsync(ReusableSession session) => session.DisposeAsync();

    void Sweep()
    {
        List<ReusableSession> old;
        lock (_lock)
        {
            var cutoff = DateTime.UtcNow - _idleTime;
            old = _idle.Where(s => s.LastUsed < cutoff).ToList();
            foreach (var s in old) _idle.Remove(s);
        }
        foreach (var s in old) _ = s.DisposeAsync().AsTask();
    }

    public async ValueTask DisposeAsync()
    {
        List<ReusableSession> all;
        lock (_lock)
        {
            _disposed = true;
            all = [.. _idle];
            _idle.Clear();
        }
        if (_sweeper is not null) await _sweeper.DisposeAsync();
        foreach (var s in all) await s.DisposeAsync();
    }
}
