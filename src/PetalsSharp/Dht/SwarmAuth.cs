using Grpc.Core;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;

namespace PetalsSharp.Dht;

/// <summary>
/// Private-swarm authentication for any gRPC service (the DHT here; the block service can use the same key): a
/// client interceptor that adds a proof of the <see cref="SwarmKey"/> to every call and checks the server's proof
/// in the reply headers, and a server interceptor that refuses calls without a valid proof (PERMISSION_DENIED).
/// </summary>
/// <example>
/// Client: <c>var invoker = SwarmAuth.Apply(channel, key); var client = new BlockService.BlockServiceClient(invoker);</c><br/>
/// Server: <c>services.AddGrpc().AddServiceOptions&lt;MyService&gt;(o =&gt; SwarmAuth.Protect(o, key));</c>
/// </example>
public static class SwarmAuth
{
    /// <summary>Request metadata header carrying the caller's proof.</summary>
    public const string RequestHeader = "petals-swarm-auth";

    /// <summary>Response header carrying the server's proof.</summary>
    public const string ReplyHeader = "petals-swarm-auth-reply";

    /// <summary>A call invoker for <paramref name="channel"/> that authenticates both ways with <paramref name="key"/>; plain when key is null (public swarm).</summary>
    public static CallInvoker Apply(GrpcChannel channel, SwarmKey? key) =>
        key is null ? channel.CreateCallInvoker() : channel.Intercept(new SwarmAuthClientInterceptor(key));

    /// <summary>Adds the server-side check to one service's options; nothing when key is null (public swarm).</summary>
    public static void Protect(Grpc.AspNetCore.Server.GrpcServiceOptions options, SwarmKey? key)
    {
        if (key is not null) options.Interceptors.Add<SwarmAuthServerInterceptor>(key);
    }

    internal static RpcException Denied(string detail) => new(new Status(StatusCode.PermissionDenied, detail));
}

/// <summary>Refuses calls without a valid swarm-key proof and proves the key back in the response headers.</summary>
public sealed class SwarmAuthServerInterceptor(SwarmKey key) : Interceptor
{
    async Task Check(ServerCallContext context)
    {
        var proof = context.RequestHeaders.GetValue(SwarmAuth.RequestHeader);
        if (!key.VerifyRequestProof(context.Method, proof, DateTimeOffset.UtcNow))
            throw SwarmAuth.Denied(proof is null
                ? "this is a private swarm: the call carries no swarm-key proof"
                : "the call's swarm-key proof is invalid (wrong key, or clocks more than 5 minutes apart)");
        await context.WriteResponseHeadersAsync(new Metadata { { SwarmAuth.ReplyHeader, key.CreateReplyProof(proof!) } }).ConfigureAwait(false);
    }

    public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context,
        UnaryServerMethod<TRequest, TResponse> continuation)
    {
        await Check(context).ConfigureAwait(false);
        return await continuation(request, context).ConfigureAwait(false);
    }

    public override async Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream,
        ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        await Check(context).ConfigureAwait(false);
        return await continuation(requestStream, context).ConfigureAwait(false);
    }

    public override async Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream,
        ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        await Check(context).ConfigureAwait(false);
        await continuation(request, responseStream, context).ConfigureAwait(false);
    }

    public override async Task DuplexStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream,
        IServerStreamWriter<TResponse> responseStream, ServerCallContext context, DuplexStreamingServerMethod<TRequest, TResponse> continuation)
    {
        await Check(context).ConfigureAwait(false);
        await continuation(requestStream, responseStream, context).ConfigureAwait(false);
    }
}

/// <summary>
/// Adds a swarm-key proof to every call and fails the call with PERMISSION_DENIED when the server does not prove
/// the key back, so a member never trusts an outsider's answers. Blocking calls are refused: their reply headers
/// cannot be checked.
/// </summary>
public sealed class SwarmAuthClientInterceptor(SwarmKey key) : Interceptor
{
    ClientInterceptorContext<TRequest, TResponse> WithProof<TRequest, TResponse>(ClientInterceptorContext<TRequest, TResponse> context, out string proof)
        where TRequest : class where TResponse : class
    {
        proof = key.CreateRequestProof(context.Method.FullName, DateTimeOffset.UtcNow);
        var headers = new Metadata();
        if (context.Options.Headers is { } existing)
            foreach (var entry in existing) headers.Add(entry);
        headers.Add(SwarmAuth.RequestHeader, proof);
        return new ClientInterceptorContext<TRequest, TResponse>(context.Method, context.Host, context.Options.WithHeaders(headers));
    }

    void CheckReply(string proof, Metadata headers)
    {
        if (!key.VerifyReplyProof(proof, headers.GetValue(SwarmAuth.ReplyHeader)))
            throw SwarmAuth.Denied("the peer did not prove the swarm key: it is not a member of this private swarm");
    }

    // Awaiting the response first lets a server error (e.g. its own PERMISSION_DENIED) surface as itself.
    async Task<T> Checked<T>(Task<T> response, Task<Metadata> headers, string proof)
    {
        var result = await response.ConfigureAwait(false);
        CheckReply(proof, await headers.ConfigureAwait(false));
        return result;
    }

    public override TResponse BlockingUnaryCall<TRequest, TResponse>(TRequest request, ClientInterceptorContext<TRequest, TResponse> context,
        BlockingUnaryCallContinuation<TRequest, TResponse> continuation) =>
        throw new NotSupportedException("swarm authentication needs async calls (reply headers are checked)");

    public override AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(TRequest request, ClientInterceptorContext<TRequest, TResponse> context,
        AsyncUnaryCallContinuation<TRequest, TResponse> continuation)
    {
        var call = continuation(request, WithProof(context, out var proof));
        return new AsyncUnaryCall<TResponse>(Checked(call.ResponseAsync, call.ResponseHeadersAsync, proof), call.ResponseHeadersAsync,
            call.GetStatus, call.GetTrailers, call.Dispose);
    }

    public override AsyncClientStreamingCall<TRequest, TResponse> AsyncClientStreamingCall<TRequest, TResponse>(
        ClientInterceptorContext<TRequest, TResponse> context, AsyncClientStreamingCallContinuation<TRequest, TResponse> continuation)
    {
        var call = continuation(WithProof(context, out var proof));
        return new AsyncClientStreamingCall<TRequest, TResponse>(call.RequestStream, Checked(call.ResponseAsync, call.ResponseHeadersAsync, proof),
            call.ResponseHeadersAsync, call.GetStatus, call.GetTrailers, call.Dispose);
    }

    public override AsyncServerStreamingCall<TResponse> AsyncServerStreamingCall<TRequest, TResponse>(TRequest request,
        ClientInterceptorContext<TRequest, TResponse> context, AsyncServerStreamingCallContinuation<TRequest, TResponse> continuation)
    {
        var call = continuation(request, WithProof(context, out var proof));
        return new AsyncServerStreamingCall<TResponse>(new CheckedReader<TResponse>(call.ResponseStream, call.ResponseHeadersAsync, proof, this),
            call.ResponseHeadersAsync, call.GetStatus, call.GetTrailers, call.Dispose);
    }

    public override AsyncDuplexStreamingCall<TRequest, TResponse> AsyncDuplexStreamingCall<TRequest, TResponse>(
        ClientInterceptorContext<TRequest, TResponse> context, AsyncDuplexStreamingCallContinuation<TRequest, TResponse> continuation)
    {
        var call = continuation(WithProof(context, out var proof));
        return new AsyncDuplexStreamingCall<TRequest, TResponse>(call.RequestStream,
            new CheckedReader<TResponse>(call.ResponseStream, call.ResponseHeadersAsync, proof, this),
            call.ResponseHeadersAsync, call.GetStatus, call.GetTrailers, call.Dispose);
    }

    /// <summary>Checks the reply headers once, after the first read (so server errors surface as themselves).</summary>
    sealed class CheckedReader<T>(IAsyncStreamReader<T> inner, Task<Metadata> headers, string proof, SwarmAuthClientInterceptor owner)
        : IAsyncStreamReader<T>
    {
        bool _checked;

        public T Current => inner.Current;

        public async Task<bool> MoveNext(CancellationToken cancellationToken)
        {
            bool more = await inner.MoveNext(cancellationToken).ConfigureAwait(false);
            if (!_checked)
            {
                owner.CheckReply(proof, await headers.ConfigureAwait(false));
                _checked = true;
            }
            return more;
        }
    }
}
