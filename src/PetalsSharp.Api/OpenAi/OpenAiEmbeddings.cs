using System.Text.Json;
using Microsoft.AspNetCore.Http;
using PetalsSharp.Api.Chat;

namespace PetalsSharp.Api.OpenAi;

/// <summary>
/// <c>POST /v1/embeddings</c>: mean-pooled final hidden states (<see cref="PetalsEmbeddingGenerator"/>) of one or
/// more inputs, each a string or an array of token ids, answered as floats or as base64 little-endian float32
/// (the official SDKs ask for base64 by default). The generator runs the inputs in token-budgeted micro-batches.
/// </summary>
internal static class OpenAiEmbeddings
{
    /// <summary>OpenAI's own cap on inputs per request; it also bounds the batch one request can put on the swarm.</summary>
    public const int MaxInputs = 2048;

    public static async Task HandleAsync(HttpContext ctx, PetalsEmbeddingGenerator embedder, TextEngine engine)
    {
        var ct = ctx.RequestAborted;
        try
        {
            var body = await OpenAiRequest.ReadAsync(ctx.Request.Body, ct);
            if (body.Model != engine.ModelId)
                throw new OpenAiError(404, $"the model '{body.Model}' does not exist", param: "model", code: "model_not_found");
            bool base64 = body.Get("encoding_format") switch
            {
                null => false,
                { ValueKind: JsonValueKind.String } f when f.GetString() is "float" or "base64" => f.GetString() == "base64",
                _ => throw OpenAiError.Invalid("encoding_format must be 'float' or 'base64'", "encoding_format"),
            };
            if (body.Get("petals") is not null)
                throw OpenAiError.Invalid("petals options are not supported on /v1/embeddings (it uses the server's default route)", "petals", "unsupported_parameter");
            if (body.Get("dimensions") is { } d
                && !(d.ValueKind == JsonValueKind.Number && d.TryGetInt32(out var dims) && dims == embedder.Metadata.DefaultModelDimensions))
                throw OpenAiError.Invalid($"dimensions can only be the model's hidden size {embedder.Metadata.DefaultModelDimensions}",
                    "dimensions", "unsupported_value");
            var rows = Inputs(body.Get("input"), engine);
            var result = await embedder.GenerateAsync(rows, ct);
            var data = result.Select((e, i) => new
            {
                @object = "embedding", index = i,
                embedding = base64 ? (object)Convert.ToBase64String(LittleEndian(e.Vector.Span)) : e.Vector.ToArray(),
            }).ToArray();
            long tokens = result.Usage?.InputTokenCount ?? 0;
            await ctx.Response.WriteAsJsonAsync(new
            {
                @object = "list", data, model = engine.ModelId, usage = new { prompt_tokens = tokens, total_tokens = tokens },
            }, ct);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
        }
        catch (Exception e)
        {
            await OpenAiError.From(e).WriteAsync(ctx);
        }
    }

    /// <summary><c>input</c>: a string, an array of strings, an array of token ids, or an array of such arrays.</summary>
    static List<IReadOnlyList<int>> Inputs(JsonElement? field, TextEngine engine)
    {
        const string Shape = "input must be a string, an array of strings, an array of token ids, or an array of token-id arrays";
        if (field is not { } input) throw OpenAiError.Invalid("you must provide an input", "input");
        IReadOnlyList<int> Text(JsonElement s) =>
            s.GetString() is { Length: > 0 } text ? engine.Encode(text) : throw OpenAiError.Invalid("input strings must not be empty", "input");
        IReadOnlyList<int> Ids(JsonElement a)
        {
            var ids = a.EnumerateArray().Select(x => x.ValueKind == JsonValueKind.Number && x.TryGetInt32(out var i) && i >= 0 ? i
                : throw OpenAiError.Invalid("token ids must be non-negative integers", "input")).ToList();
            return ids.Count > 0 ? ids : throw OpenAiError.Invalid("token-id arrays must not be empty", "input");
        }
        if (input.ValueKind == JsonValueKind.String) return [Text(input)];
        if (input.ValueKind != JsonValueKind.Array || input.GetArrayLength() == 0) throw OpenAiError.Invalid(Shape, "input");
        var first = input[0].ValueKind;
        if (first == JsonValueKind.Number) return [Ids(input)];
        if (input.GetArrayLength() > MaxInputs) throw OpenAiError.Invalid($"at most {MaxInputs} inputs per request", "input");
        return input.EnumerateArray().Select(x => x.ValueKind switch
        {
            JsonValueKind.String when first == JsonValueKind.String => Text(x),
            JsonValueKind.Array when first == JsonValueKind.Array => Ids(x),
            _ => throw OpenAiError.Invalid(Shape, "input"),
        }).ToList();
    }

    static byte[] LittleEndian(ReadOnlySpan<float> v)
    {
        var bytes = new byte[v.Length * 4];
        for (int i = 0; i < v.Length; i++) System.Buffers.Binary.BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(i * 4), v[i]);
        return bytes;
    }
}
