using Google.Protobuf;
using Grpc.Core;
using PetalsSharp.Relay.V1;

namespace PetalsSharp.Relay;

/// <summary>
/// Copies bytes between a socket's stream and a Tunnel call, both ways, until either side ends; then both end.
/// The relay and the relayed server run the same splice on their two ends of a Tunnel.
/// </summary>
static class Splice
{
    /// <summary>Largest chunk: the relay refuses bigger ones (hostile input), and 64 KiB keeps latency low.</summary>
    public const int MaxChunkBytes = 64 * 1024;

    /// <param name="stream">The TCP or Unix socket stream (the client's on the relay, the server's own listener on the server).</param>
    /// <param name="reader">Chunks from the other end of the Tunnel.</param>
    /// <param name="write">Sends one chunk to the other end (never called concurrently; the token ends a write stuck on flow control).</param>
    /// <param name="budget">Bytes per second both ways together, or null for no limit.</param>
    /// <param name="first">Bytes that arrived with the Tunnel's first message, written before anything else.</param>
    /// <param name="ct">Ends the connection.</param>
    public static async Task RunAsync(Stream stream, IAsyncStreamReader<TunnelChunk> reader, Func<TunnelChunk, CancellationToken, Task> write,
        ByteBudget? budget, ByteString? first, CancellationToken ct)
    {
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var token = linked.Token;
        var inbound = Task.Run(async () =>
        {
            if (first is { Length: > 0 }) await stream.WriteAsync(first.Memory, token).ConfigureAwait(false);
            while (await reader.MoveNext(token).ConfigureAwait(false))
            {
                var data = reader.Current.Data;
                if (data.Length > MaxChunkBytes) throw new RpcException(new Status(StatusCode.InvalidArgument, $"tunnel chunk of {data.Length} bytes (limit {MaxChunkBytes})"));
                if (data.Length == 0) continue;
                if (budget is not null) await budget.TakeAsync(data.Length, token).ConfigureAwait(false);
                await stream.WriteAsync(data.Memory, token).ConfigureAwait(false);
            }
        }, token);
        var outbound = Task.Run(async () =>
        {
            var buffer = new byte[MaxChunkBytes];
            int n;
            while ((n = await stream.ReadAsync(buffer, token).ConfigureAwait(false)) > 0)
            {
                if (budget is not null) await budget.TakeAsync(n, token).ConfigureAwait(false);
                await write(new TunnelChunk { Data = ByteString.CopyFrom(buffer, 0, n) }, token).ConfigureAwait(false);
            }
        }, token);
        // Either side ending ends the connection: TLS and HTTP/2 never half-close a live link.
        await Task.WhenAny(inbound, outbound).ConfigureAwait(false);
        linked.Cancel();
        stream.Dispose();
        try { await Task.WhenAll(inbound, outbound).ConfigureAwait(false); }
        catch (Exception) { /* a reset or a cancelled side: the connection is over either way */ }
    }
}
