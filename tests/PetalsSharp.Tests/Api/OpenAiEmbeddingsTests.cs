using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using PetalsSharp.Api.Chat;
using PetalsSharp.Api.OpenAi;
using Xunit;

namespace PetalsSharp.Tests.Api;

/// <summary><c>POST /v1/embeddings</c> over the two-server swarm equals the local mean-pooled hidden states.</summary>
[Trait("Category", "Processes")]
[Collection(ApiSwarmCollection.Name)]
public sealed class OpenAiEmbeddingsTests(ApiSwarm swarm) : OpenAiAppTest(swarm)
{
    async Task<(HttpStatusCode Status, JsonNode Body)> PostAsync(string json)
    {
        var r = await PostJsonAsync("/v1/embeddings", json.Replace("MODEL", Swarm.ModelId));
        return (r.StatusCode, JsonNode.Parse(await r.Content.ReadAsStringAsync())!);
    }

    static float[] Floats(JsonNode item) => item["embedding"] is JsonArray a
        ? a.Select(x => (float)x!).ToArray()
        : Enumerable.Range(0, Convert.FromBase64String((string)item["embedding"]!).Length / 4)
            .Select(i => BitConverter.ToSingle(Convert.FromBase64String((string)item["embedding"]!), i * 4)).ToArray();

    [Fact]
    public async Task Text_and_token_inputs_as_floats_or_base64_equal_the_local_embeddings()
    {
        using var local = new PetalsEmbeddingGenerator(Swarm.Local, Swarm.ModelId);
        string[] texts = ["a cat", "a much longer sentence about dogs and cats"];
        var expected = await local.GenerateAsync(texts);

        var (status, floats) = await PostAsync("""{"model":"MODEL","input":["a cat","a much longer sentence about dogs and cats"]}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("list", (string?)floats["object"]);
        Assert.Equal(Swarm.ModelId, (string?)floats["model"]);
        Assert.Equal(expected.Usage!.InputTokenCount, (long)floats["usage"]!["prompt_tokens"]!);
        var data = floats["data"]!.AsArray();
        Assert.Equal(2, data.Count);
        for (int i = 0; i < 2; i++)
        {
            Assert.Equal(i, (int)data[i]!["index"]!);
            Assert.Equal("embedding", (string?)data[i]!["object"]);
            AssertClose(expected[i].Vector.ToArray(), Floats(data[i]!));
        }

        var (_, b64) = await PostAsync("""{"model":"MODEL","input":"a cat","encoding_format":"base64"}""");
        Assert.IsType<string>((string?)b64["data"]![0]!["embedding"]);
        AssertClose(expected[0].Vector.ToArray(), Floats(b64["data"]![0]!));

        var ids = Swarm.Local.Tokenizer!.Encode("a cat");
        var (_, tokens) = await PostAsync($$"""{"model":"MODEL","input":[{{string.Join(",", ids)}}]}""");
        AssertClose(expected[0].Vector.ToArray(), Floats(tokens["data"]![0]!));
    }

    [Theory]
    [InlineData("""{"model":"MODEL"}""", 400, "input")]
    [InlineData("""{"model":"MODEL","input":[]}""", 400, "input")]
    [InlineData("""{"model":"MODEL","input":""}""", 400, "input")]
    [InlineData("""{"model":"MODEL","input":[1,"a"]}""", 400, "input")]
    [InlineData("""{"model":"MODEL","input":[[1],[]]}""", 400, "input")]
    [InlineData("""{"model":"MODEL","input":[-1]}""", 400, "input")]
    [InlineData("""{"model":"MODEL","input":[99999999]}""", 400, null)]
    [InlineData("""{"model":"MODEL","input":"x","encoding_format":"int8"}""", 400, "encoding_format")]
    [InlineData("""{"model":"MODEL","input":"x","dimensions":7}""", 400, "dimensions")]
    [InlineData("""{"model":"MODEL","input":"x","dimensions":"32"}""", 400, "dimensions")]
    [InlineData("""{"model":"MODEL","input":"x","petals":{"allowed_servers":["a"]}}""", 400, "petals")]
    [InlineData("""{"model":"nope","input":"x"}""", 404, "model")]
    [InlineData("""[1]""", 400, null)]
    public async Task Bad_requests_get_openai_errors(string body, int status, string? param)
    {
        var (code, json) = await PostAsync(body);
        Assert.Equal(status, (int)code);
        Assert.False(string.IsNullOrEmpty((string?)json["error"]!["message"]));
        Assert.Equal(param, (string?)json["error"]!["param"]);
    }

    [Fact]
    public async Task Get_is_405()
    {
        var r = await Http.GetAsync("/v1/embeddings");
        Assert.Equal(HttpStatusCode.MethodNotAllowed, r.StatusCode);
    }

    static void AssertClose(float[] expected, float[] actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        var worst = expected.Zip(actual, (e, a) => Math.Abs(e - a)).Max();
        Assert.True(worst <= 1e-4f, $"max abs diff {worst}");
    }

    [Fact]
    public async Task A_request_bigger_than_a_server_takes_at_once_is_split_and_still_equals_local()
    {
        // 40 inputs of ~450 tokens: one padded batch would be ~18000 tokens, past a server's 16384 per request.
        var texts = Enumerable.Range(0, 40).Select(i => string.Join(" ", Enumerable.Repeat($"w{i % 7}", 200 + i))).ToList();
        using var local = new PetalsEmbeddingGenerator(Swarm.Local, Swarm.ModelId);
        var expected = await local.GenerateAsync(texts);
        Assert.True(expected.Usage!.InputTokenCount > 16384, $"{expected.Usage.InputTokenCount} tokens");
        var body = new System.Text.Json.Nodes.JsonObject { ["model"] = Swarm.ModelId, ["input"] = new JsonArray(texts.Select(t => (JsonNode?)t).ToArray()) };
        var (status, json) = await PostAsync(body.ToJsonString());
        Assert.Equal(HttpStatusCode.OK, status);
        var data = json["data"]!.AsArray();
        Assert.Equal(40, data.Count);
        for (int i = 0; i < 40; i++) AssertClose(expected[i].Vector.ToArray(), Floats(data[i]!));
    }
}
