using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;

namespace PetalsSharp.Wire;

/// <summary>
/// Checks the 5-byte header of every gRPC message a request sends before Grpc.AspNetCore reads it. The framework
/// refuses a length above its receive limit with RESOURCE_EXHAUSTED, but one above 2^31 (say 0xFFFFFFF0) makes it
/// throw a plain exception that leaves as UNKNOWN "Exception was thrown by handler"; and it answers a body that ends
/// inside a message, a unary call with no message or two, and a bad compression flag with INTERNAL or UNKNOWN. A
/// hostile peer should learn what was wrong (INVALID_ARGUMENT), and our logs should not call it a server fault.
/// </summary>
public static class GrpcFrameGuard
{
    /// <summary>Adds the check to the gRPC requests of <paramref name="app"/> under <paramref name="pathPrefix"/>; run it before the endpoints.</summary>
    public static void UseGrpcFrameGuard(this IApplicationBuilder app, long maxMessageBytes, string pathPrefix) => app.Use(async (context, next) =>
    {
        if (context.Request.Path.StartsWithSegments(pathPrefix, StringComparison.Ordinal)
            && context.Request.ContentType?.StartsWith("application/grpc", StringComparison.OrdinalIgnoreCase) == true
            && context.Features.Get<IRequestBodyPipeFeature>() is { } body)
        {
            // Routing has run (WebApplication adds it first), so the endpoint says whether the call is unary.
            bool unary = context.GetEndpoint()?.Metadata.GetMetadata<Grpc.AspNetCore.Server.GrpcMethodMetadata>()?.Method.Type == MethodType.Unary;
            var encoding = context.Request.Headers["grpc-encoding"].ToString();
            bool compressed = encoding.Length > 0 && encoding != "identity";
            context.Features.Set<IRequestBodyPipeFeature>(new Feature(new Reader(body.Reader, maxMessageBytes, unary, compressed)));
        }
        await next(context);
    });

    static RpcException Invalid(string message) => new(new Status(StatusCode.InvalidArgument, message));

    sealed class Feature(PipeReader reader) : IRequestBodyPipeFeature
    {
        public PipeReader Reader => reader;
    }

    /// <summary>Passes the body through, reading each message header as it first becomes visible.</summary>
    /// <param name="inner">The request body.</param>
    /// <param name="limit">Largest message length accepted.</param>
    /// <param name="unary">One message exactly, as a unary call carries.</param>
    /// <param name="compressed">The request names a grpc-encoding, so a message may be marked compressed.</param>
    sealed class Reader(PipeReader inner, long limit, bool unary, bool compressed) : PipeReader
    {
        long _start;          // stream offset of the first byte of the buffer last handed out
        long _nextHeader;     // stream offset of the next message's header (flag byte + big-endian length)
        uint _lastLength;     // length of the message whose header was read last
        int _messages;        // headers seen (counted for unary calls only)
        ReadOnlySequence<byte> _last;

        public override async ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
        {
            var result = await inner.ReadAsync(cancellationToken);
            Check(result.Buffer, result.IsCompleted);
            return result;
        }

        public override bool TryRead(out ReadResult result)
        {
            if (!inner.TryRead(out result)) return false;
            Check(result.Buffer, result.IsCompleted);
            return true;
        }

        void Check(ReadOnlySequence<byte> buffer, bool completed)
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
                if (header[0] > 1) throw Invalid($"a gRPC message header has compression flag {header[0]}; only 0 (plain) and 1 (compressed) exist");
                if (header[0] == 1 && !compressed) throw Invalid("a gRPC message is marked compressed, but the request names no grpc-encoding");
                if (unary && ++_messages > 1) throw Invalid("a unary call carries one message; this request sent more");
                _lastLength = length;
                _nextHeader += 5 + length;
            }
            if (!completed) return;
            if (_nextHeader < end)
                throw Invalid($"the request ended inside a gRPC message header ({end - _nextHeader} of its 5 bytes arrived)");
            if (_nextHeader > end)
                throw Invalid($"the request ended inside a gRPC message ({_lastLength - (_nextHeader - end)} of its {_lastLength} bytes arrived)");
            if (unary && _messages == 0) throw Invalid("a unary call carries one message; this request sent none");
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
