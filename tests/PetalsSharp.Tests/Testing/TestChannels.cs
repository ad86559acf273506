using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using Grpc.Net.Client;

namespace PetalsSharp.Tests;

/// <summary>
/// Raw channels for tests that play a hostile or hand-made client: TLS like every peer link (any certificate
/// accepted, since these tests attack the service, not the handshake), optionally leaving from a chosen local address.
/// </summary>
public static class TestChannels
{
    public static Uri Url(string address, string path = "") => new($"https://{address}/{path}");

    /// <param name="source">Local address to connect from (Linux routes all of 127/8 on lo: one machine plays many clients).</param>
    public static SocketsHttpHandler Handler(IPAddress? source = null)
    {
        var handler = new SocketsHttpHandler
        {
            SslOptions = new SslClientAuthenticationOptions
            {
                RemoteCertificateValidationCallback = (_, _, _, _) => true,
                ApplicationProtocols = [SslApplicationProtocol.Http2],
            },
        };
        if (source is not null)
            handler.ConnectCallback = async (context, ct) =>
            {
                var socket = new Socket(source.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                try
                {
                    socket.Bind(new IPEndPoint(source, 0));
                    await socket.ConnectAsync(context.DnsEndPoint, ct);
                    return new NetworkStream(socket, ownsSocket: true);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
            };
        return handler;
    }

    public static GrpcChannel Create(string address, IPAddress? source = null, int maxMessageBytes = 64 << 20) =>
        GrpcChannel.ForAddress(Url(address), new GrpcChannelOptions
        {
            MaxReceiveMessageSize = maxMessageBytes,
            MaxSendMessageSize = maxMessageBytes,
            InitialReconnectBackoff = TimeSpan.FromMilliseconds(50),
            HttpHandler = Handler(source),
        });
}
