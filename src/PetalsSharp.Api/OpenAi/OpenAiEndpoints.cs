using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.AI;
using PetalsSharp.Api.Chat;

namespace PetalsSharp.Api.OpenAi;

/// <summary>
/// OpenAI-compatible endpoints over one model: <c>GET /v1/models</c>, <c>POST /v1/completions</c>,
/// <c>POST /v1/chat/completions</c> (each with <c>stream: true</c> as server-sent events ending in
/// <c>data: [DONE]</c>), and <c>POST /v1/embeddings</c>. Every request runs its own inference session.
/// Errors are OpenAI's error JSON.
/// </summary>
public static class OpenAiEndpoints
{
    static readonly string[] OtherMethods = ["GET", "PUT", "DELETE", "PATCH"];

    /// <summary>Maps the endpoints onto <paramref name="endpoints"/> (any WebApplication, so others can share it).</summary>
    public static IEndpointRouteBuilder MapOpenAiEndpoints(this IEndpointRouteBuilder endpoints, PetalsChatClient chat)
    {
        var created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        object ModelCard() => new { id = chat.Engine.ModelId, @object = "model", created, owned_by = "petals" };
        endpoints.MapGet("/v1/models", () => Results.Json(new { @object = "list", data = new[] { ModelCard() } }));
        endpoints.MapGet("/v1/models/{**id}", (HttpContext ctx, string id) => id == chat.Engine.ModelId
            ? Results.Json(ModelCard()) : Error(ctx, NoSuchModel(id)));
        endpoints.MapPost("/v1/chat/completions", (HttpContext ctx) => HandleAsync(ctx, chat, chatMode: true));
        endpoints.MapPost("/v1/completions", (HttpContext ctx) => HandleAsync(ctx, chat, chatMode: false));
        var embedder = new PetalsEmbeddingGenerator(chat.Engine.Model, chat.Engine.ModelId);
        endpoints.MapPost("/v1/embeddings", (HttpContext ctx) => OpenAiEmbeddings.HandleAsync(ctx, embedder, chat.Engine));
        foreach (var path in new[] { "/v1/chat/completions", "/v1/completions", "/v1/embeddings" })
            endpoints.MapMethods(path, OtherMethods, (HttpContext ctx) =>
                Error(ctx, new OpenAiError(405, $"{ctx.Request.Method} {path} is not allowed; use POST", code: "method_not_allowed")));
        endpoints.MapFallback("/v1/{**rest}", (HttpContext ctx) =>
            Error(ctx, new OpenAiError(404, $"unknown route {ctx.Request.Method} {ctx.Request.Path}", code: "unknown_url")));
        return endpoints;
    }

    static IResult Error(HttpContext ctx, OpenAiError e) => Results.Json(e.Body(), statusCode: e.Status);

    static OpenAiError NoSuchModel(string id) =>
        new(404, $"the model '{id}' does not exist", param: "model", code: "model_not_found");

    static async Task HandleAsync(HttpContext ctx, PetalsChatClient chat, bool chatMode)
    {
        var ct = ctx.RequestAborted;
        try
        {
            var body = await OpenAiRequest.ReadAsync(ctx.Request.Body, ct);
            if (body.Model != chat.Engine.ModelId) throw NoSuchModel(body.Model);
            GenerationRequest request;
            string echo = "";
            if (chatMode) request = chat.Prepare(body.Messages(), body.Options(null));
            else
            {
                var options = body.Options(defaultMaxTokens: 16);
                var (text, ids) = body.Prompt();
                var vocab = chat.Engine.Model.Config.VocabSize;
                if (ids is not null && ids.Any(i => i >= vocab)) throw OpenAiError.Invalid($"prompt token ids must be below the vocabulary size {vocab}", "prompt");
                request = GenerationRequest.Create(chat.Engine.Model, ids ?? chat.Engine.Encode(text!), options);
                if (body.Echo) echo = text ?? chat.Engine.Tokenizer.Decode(ids!);
            }
            var reply = new Reply(chatMode, chat.Engine.ModelId);
            if (body.Stream) await StreamAsync(ctx, chat.Engine, request, reply, echo, body.IncludeUsage, ct);
            else
            {
                var done = await chat.Engine.GenerateAsync(request, ct);
                await ctx.Response.WriteAsJsonAsync(reply.Whole(echo + done.Text, done), ct);
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            // The client went away: the session is already closed, and there is nobody to answer.
        }
        catch (Exception e) when (!ctx.Response.HasStarted)
        {
            await OpenAiError.From(e).WriteAsync(ctx);
        }
        catch (Exception e)
        {
            // Mid-stream the status is sent already: report it as an error event, as OpenAI does.
            await SendAsync(ctx, OpenAiError.From(e).Body(), CancellationToken.None);
        }
    }

    static async Task StreamAsync(HttpContext ctx, TextEngine engine, GenerationRequest request, Reply reply, string echo,
        bool includeUsage, CancellationToken ct)
    {
        // Generation starts before the headers go out, so a request that fails at once still gets a plain error status.
        await using var updates = engine.StreamAsync(request, ct).GetAsyncEnumerator(ct);
        bool more = await updates.MoveNextAsync();
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        await SendAsync(ctx, reply.Chunk(echo, null, first: true), ct);
        TextCompletion? done = null;
        for (; more; more = await updates.MoveNextAsync())
        {
            var u = updates.Current;
            done = u.Final;
            if (u.Delta.Length > 0) await SendAsync(ctx, reply.Chunk(u.Delta, null), ct);
        }
        await SendAsync(ctx, reply.Chunk("", done!.FinishReason), ct);
        if (includeUsage) await SendAsync(ctx, reply.UsageChunk(done), ct);
        await ctx.Response.WriteAsync("data: [DONE]\n\n", ct);
        await ctx.Response.Body.FlushAsync(ct);
    }

    static async Task SendAsync(HttpContext ctx, object payload, CancellationToken ct)
    {
        await ctx.Response.WriteAsync("data: " + JsonSerializer.Serialize(payload) + "\n\n", ct);
        await ctx.Response.Body.FlushAsync(ct);
    }

    /// <summary>The JSON shapes of one response (chat or text completion), sharing its id and timestamp.</summary>
    sealed class Reply(bool chat, string model)
    {
        readonly string _id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
        readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

        static string? Finish(ChatFinishReason? f) => f is null ? null : f == ChatFinishReason.Length ? "length" : "stop";

        static object Usage(TextCompletion d) =>
            new
            {
                prompt_tokens = d.PromptTokens, completion_tokens = d.CompletionTokens, total_tokens = d.PromptTokens + d.CompletionTokens,
                prompt_tokens_details = new { cached_tokens = d.CachedTokens },
            };

        public object Whole(string text, TextCompletion d) => chat
            ? new
            {
                id = _id, @object = "chat.completion", created = _created, model,
                choices = new[] { new { index = 0, message = new { role = "assistant", content = text }, logprobs = (object?)null, finish_reason = Finish(d.FinishReason) } },
                usage = Usage(d), petals_route = d.Route,
            }
            : new
            {
                id = _id, @object = "text_completion", created = _created, model,
                choices = new[] { new { index = 0, text, logprobs = (object?)null, finish_reason = Finish(d.FinishReason) } },
                usage = Usage(d), petals_route = d.Route,
            };

        public object Chunk(string text, ChatFinishReason? finish, bool first = false) => chat
            ? new
            {
                id = _id, @object = "chat.completion.chunk", created = _created, model,
                choices = new[]
                {
                    new
                    {
                        index = 0,
                        delta = finish is null ? (object)new { role = first ? "assistant" : null, content = text } : new { },
                        logprobs = (object?)null, finish_reason = Finish(finish),
                    },
                },
            }
            : new
            {
                id = _id, @object = "text_completion", created = _created, model,
                choices = new[] { new { index = 0, text, logprobs = (object?)null, finish_reason = Finish(finish) } },
            };

        public object UsageChunk(TextCompletion d) => new
        {
            id = _id, @object = chat ? "chat.completion.chunk" : "text_completion", created = _created, model,
            choices = Array.Empty<object>(), usage = Usage(d),
        };
    }
}
