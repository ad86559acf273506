using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;

namespace PetalsSharp.Wire;

/// <summary>
/// Checks the 5-byte length prefix of every gRPC message a request sends before Grpc.AspNetCore reads it. The
/// framework refuses a length above its receive limit with RESOURCE_EXHAUSTED, but one above 2^31 (say 0xFFFFFFF0)
/// makes it throw a plain exception that leaves as UNKNOWN "Exception was thrown by handler"; a hostile peer
/// should learn what was wrong, and our logs should not call it a server fault.
/// </summary>
public static class GrpcFrameGuard
{
    /// <summary>Adds the check to the gRPC requests of <paramref name="app"/> under <paramref name="pathPrefix"/>; run it before the endpoints.</summary>
    public static void UseGrpcFrameGuard(this IApplicationBuilder app, long maxMessageBytes, string pathPrefix) => app.Use(async (context, next) =>
    {
        if (context.Request.Path.StartsWithSegments(pathPrefix, StringComparison.Ordinal)
            && context.Request.ContentType?.StartsWith("application/grpc", StringComparison.OrdinalIgnoreCase) == true
            && context.Features.Get<IRequestBodyPipeFeature>() is { } body)
            context.Features.Set<IRequestBodyPipeFeature>(new Feature(new Reader(body.Reader, maxMessageBytes)));
        await next(context);
    });

    sealed class Feature(PipeReader reader) : IRequestBodyPipeFeature
    {
        public PipeReader Reader => reader;
    }

    /// <summary>Passes the body through, reading each message header as it first becomes visible.</summary>
    sealed class Reader(PipeReader inner, long limit) : PipeReader
    {
        long _start;          // stream offset of the first byte of the buffer last handed out
        long _nextHeader;     // stream offset of the next message's header (flag byte + big-endian length)
        ReadOnlySequence<byte> _last;

        public override async ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
        {
            var result = await inner.ReadAsync(cancellationToken);
            Check(result.Buffer);
            return result;
        }

        public override bool TryRead(out ReadResult result)
        {
            if (!inner.TryRead(out result)) return false;
            Check(result.Buffer);
            return true;
        }

        void Check(ReadOnlySequence<byte> buffer)
        {
            _last = buffer;
            long end = _start + buffer.Length;
            Span<byte> header = stackalloc byte[5];
            while (_nextHeader >= _start && _nextHeader + 5 <= end)
            {
                buffer.Slice(_nextHeader - _start, 5).CopyTo(header);
                uint length = BinaryPrimitives.ReadUInt32BigEndian(header[1..]);
                if (length > limit)
                    throw new RpcException(new Status(StatusCode.ResourceExhausted,
                        $"a gRPC message of {length} bytes exceeds the maximum of {limit} bytes this server accepts per message"));
                _nextHeader += 5 + length;
            }
        }

        public override void AdvanceTo(SequencePosition consumed)
        {
            _start += _last.Slice(_last.Start, consumed).Length;
            inner.AdvanceTo(consumed);
        }

        public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
        {
            _start += _last.Slice(_last.Start, consumed).Length;
            inner.AdvanceTo(consumed, examined);
        }

        public override void CancelPendingRead() => inner.CancelPendingRead();

        public override void Complete(Exception? exception = null) => inner.Complete(exception);

        public override ValueTask CompleteAsync(Exception? exception = null) => inner.CompleteAsync(exception);
    }
}
