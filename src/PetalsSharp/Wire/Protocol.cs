namespace PetalsSharp.Wire;

/// <summary>Protocol constants shared by clients and servers.</summary>
public static class Protocol
{
    /// <summary>Bumped with the proto package on any incompatible change.</summary>
    public const uint Version = 1;

    /// <summary>Software version announced in Info.</summary>
    public static string SoftwareVersion =>
        typeof(Protocol).Assembly.GetName().Version?.ToString(3) ?? "0.0.0";

    /// <summary>Serialized tensors are cut into chunks of this size; a 1 MiB message costs ~5 ms on loopback.</summary>
    public const int ChunkBytes = 1 << 20;

    /// <summary>
    /// Trailer of a busy answer (RESOURCE_EXHAUSTED): milliseconds after which the server expects room again. gRPC's
    /// own name for a server's retry pushback, so generic gRPC clients with retry policies honour it too.
    /// </summary>
    public const string RetryPushbackTrailer = "grpc-retry-pushback-ms";

    /// <summary>Default limit on one gRPC message (both directions); steps larger than this are split by the client.</summary>
    public const int DefaultMaxMessageBytes = 16 << 20;

    /// <summary>Default limit on one tensor assembled from chunks (Forward/Backward).</summary>
    public const long DefaultMaxTensorBytes = 1L << 30;
}

/// <summary>A message that breaks the protocol: wrong shape, size, dtype, values or order. Maps to INVALID_ARGUMENT.</summary>
public class WireException(string message) : Exception(message);
