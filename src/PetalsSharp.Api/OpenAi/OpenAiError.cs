using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace PetalsSharp.Api.OpenAi;

/// <summary>An error answered as OpenAI does: <c>{"error":{"message","type","param","code"}}</c> with an HTTP status.</summary>
public sealed class OpenAiError(int status, string message, string type = "invalid_request_error", string? param = null, string? code = null)
    : Exception(message)
{
    public int Status { get; } = status;
    public string Type { get; } = type;
    public string? Param { get; } = param;
    public string? Code { get; } = code;

    public static OpenAiError Invalid(string message, string? param = null, string? code = null) => new(400, message, param: param, code: code);

    public object Body() => new { error = new { message = Message, type = Type, param = Param, code = Code } };

    /// <summary>Maps a failure to what a client should see: its own fault (400), the swarm's (503) or ours (500).</summary>
    public static OpenAiError From(Exception e)
    {
        while (e is AggregateException { InnerException: { } inner }) e = inner;
        return e switch
        {
            OpenAiError o => o,
            Chat.PromptTooLongException => Invalid(e.Message, code: "context_length_exceeded"),
            // Kestrel's own refusals while the body is read, such as 413 for a body over the size limit.
            BadHttpRequestException bad => new(bad.StatusCode, e.Message, code: bad.StatusCode == 413 ? "request_too_large" : null),
            ArgumentException or NotSupportedException or PetalsSharp.Text.Templates.ChatTemplateException => Invalid(e.Message),
            Grpc.Core.RpcException { StatusCode: Grpc.Core.StatusCode.InvalidArgument } rpc => Invalid($"a server refused the request: {rpc.Status.Detail}"),
            Swarm.SwarmException => new(503, e.Message, "server_error", code: "swarm_unavailable"),
            Grpc.Core.RpcException rpc => new(503, $"a server answered {rpc.StatusCode}: {rpc.Status.Detail}", "server_error", code: "swarm_unavailable"),
            _ => new(500, $"{e.GetType().Name}: {e.Message}", "server_error"),
        };
    }

    public Task WriteAsync(HttpContext context)
    {
        context.Response.StatusCode = Status;
        context.Response.ContentType = "application/json";
        return context.Response.WriteAsync(JsonSerializer.Serialize(Body()));
    }
}
