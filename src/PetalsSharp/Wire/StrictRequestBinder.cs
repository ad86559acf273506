using Google.Protobuf;
using Grpc.Core;

namespace PetalsSharp.Wire;

/// <summary>
/// Binds a generated gRPC service so that a request message the parser refuses (bytes that are no protobuf, a field
/// cut short, a string that is not UTF-8) is answered INVALID_ARGUMENT naming the message type. Grpc.AspNetCore
/// parses before any handler runs: on its own it answers a unary call UNKNOWN "Exception was thrown by handler." and
/// hands a streaming handler the parser's exception, which then left as INTERNAL and was logged as a server fault.
/// A service opts in with <c>[BindServiceMethod(typeof(TService), nameof(BindStrict))]</c> and a static BindStrict
/// that passes the generated BindService a <see cref="StrictRequestBinder"/> (see BlockServiceImpl, DhtGrpcService).
/// </summary>
public sealed class StrictRequestBinder(ServiceBinderBase inner) : ServiceBinderBase
{
    public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, UnaryServerMethod<TRequest, TResponse>? handler) =>
        inner.AddMethod(Strict(method), handler);

    public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, ClientStreamingServerMethod<TRequest, TResponse>? handler) =>
        inner.AddMethod(Strict(method), handler);

    public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, ServerStreamingServerMethod<TRequest, TResponse>? handler) =>
        inner.AddMethod(Strict(method), handler);

    public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, DuplexStreamingServerMethod<TRequest, TResponse>? handler) =>
        inner.AddMethod(Strict(method), handler);

    static Method<TRequest, TResponse> Strict<TRequest, TResponse>(Method<TRequest, TResponse> method) where TRequest : class where TResponse : class =>
        new(method.Type, method.ServiceName, method.Name, Strict(method.RequestMarshaller), method.ResponseMarshaller);

    static Marshaller<T> Strict<T>(Marshaller<T> marshaller) => new(marshaller.ContextualSerializer, context =>
    {
        try { return marshaller.ContextualDeserializer(context); }
        catch (InvalidProtocolBufferException e)
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, $"the request is not a valid {typeof(T).Name} message: {e.Message}"));
        }
    });
}
