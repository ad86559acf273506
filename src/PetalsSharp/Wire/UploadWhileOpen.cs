using Grpc.Core;

namespace PetalsSharp.Wire;

/// <summary>
/// Uploads a duplex call's request while watching its reply. A peer that ends the call before reading the whole
/// request (a refusal: too large, wrong blocks) leaves HTTP/2 flow control with no credit to give; a write waiting for
/// it then waits forever, and once the finished stream is dropped nothing even references that wait, so no deadline
/// or cancellation reaches it (seen in CI: a test's whole async chain was collected mid-write). Racing each write
/// against the first reply ends the upload as soon as the peer has answered; the caller then reads the peer's status.
/// </summary>
public static class UploadWhileOpen
{
    /// <summary>
    /// Writes <paramref name="messages"/> and completes the request, unless <paramref name="firstReply"/> (the call's
    /// first <c>MoveNext</c>, started before the upload) ends the call first. Returns false when it did: the reply
    /// task then holds the outcome (false, or the peer's <see cref="RpcException"/>).
    /// </summary>
    public static async Task<bool> WriteAllAsync<T>(IClientStreamWriter<T> writer, IEnumerable<T> messages, Task<bool> firstReply,
        CancellationToken ct = default) where T : class
    {
        foreach (var message in messages)
            if (!await RaceAsync(writer.WriteAsync(message, ct), firstReply).ConfigureAwait(false)) return false;
        return await RaceAsync(writer.CompleteAsync(), firstReply).ConfigureAwait(false);
    }

    /// <summary>True when <paramref name="write"/> finished; false when the call ended first (the write's fault, if any, is observed).</summary>
    static async Task<bool> RaceAsync(Task write, Task<bool> firstReply)
    {
        if (!write.IsCompleted)
        {
            // A reply that carries data while we still write is a live call: keep waiting for the write alone.
            var done = await Task.WhenAny(write, firstReply).ConfigureAwait(false);
            if (done != write && !(firstReply.IsCompletedSuccessfully && firstReply.Result))
            {
                _ = write.ContinueWith(static t => _ = t.Exception, CancellationToken.None,
                    TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
                return false;
            }
        }
        try
        {
            await write.ConfigureAwait(false);
            return true;
        }
        catch (Exception e) when (e is RpcException or InvalidOperationException or IOException)
        {
            return false;   // the call ended under the write: its status is the reply's
        }
    }
}
