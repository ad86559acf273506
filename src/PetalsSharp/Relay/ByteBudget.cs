using System.Diagnostics;

namespace PetalsSharp.Relay;

/// <summary>
/// A token bucket of bytes per second, one second deep, that callers wait on: a relay slows a server's traffic to
/// its limit instead of cutting connections (which would look like a dead server and cause failovers).
/// </summary>
sealed class ByteBudget(long bytesPerSecond)
{
    readonly object _lock = new();
    double _tokens = bytesPerSecond;
    long _stamp = Stopwatch.GetTimestamp();

    public long BytesPerSecond => bytesPerSecond;

    /// <summary>Waits until <paramref name="bytes"/> may pass (a chunk larger than the bucket waits for a full one).</summary>
    public async ValueTask TakeAsync(int bytes, CancellationToken ct)
    {
        double need = Math.Min(bytes, bytesPerSecond);
        while (true)
        {
            double wait;
            lock (_lock)
            {
                long now = Stopwatch.GetTimestamp();
                _tokens = Math.Min(bytesPerSecond, _tokens + (now - _stamp) / (double)Stopwatch.Frequency * bytesPerSecond);
                _stamp = now;
                if (_tokens >= need)
                {
                    _tokens -= need;
                    return;
                }
                wait = (need - _tokens) / bytesPerSecond;
            }
            await Task.Delay(TimeSpan.FromSeconds(Math.Max(wait, 0.001)), ct).ConfigureAwait(false);
        }
    }
}
