using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using PetalsSharp.Api.OpenAi;
using Xunit;

namespace PetalsSharp.Tests.Api;

/// <summary>The OpenAI-compatible endpoints, in-process on an ephemeral port, over the two-server swarm.</summary>
[Trait("Category", "Processes")]
[Collection(ApiSwarmCollection.Name)]
public sealed class OpenAiEndpointTests(ApiSwarm swarm) : OpenAiAppTest(swarm)
{
    Task<HttpResponseMessage> PostAsync(string path, string json) => PostJsonAsync(path, json);

    static async Task<JsonNode> JsonAsync(HttpResponseMessage r) => JsonNode.Parse(await r.Content.ReadAsStringAsync())!;

    /// <summary>Reads an SSE body: the JSON chunks, and checks it ends with [DONE].</summary>
    static async Task<List<JsonNode>> EventsAsync(HttpResponseMessage r)
    {
        Assert.Equal("text/event-stream", r.Content.Headers.ContentType?.MediaType);
        var events = (await r.Content.ReadAsStringAsync()).Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.All(events, e => Assert.StartsWith("data: ", e));
        Assert.Equal("data: [DONE]", events[^1]);
        return events[..^1].Select(e => JsonNode.Parse(e["data: ".Length..])!).ToList();
    }

    string Chat(bool stream, string extra = "") =>
        $$"""{"model":"{{Swarm.ModelId}}","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi there"}]}],"temperature":0,"max_tokens":10,"stream":{{(stream ? "true" : "false")}}{{extra}}}""";

    [Fact]
    public async Task Models_lists_the_one_model()
    {
        var list = await JsonAsync(await Http.GetAsync("/v1/models"));
        Assert.Equal("list", (string?)list["object"]);
        Assert.Equal(Swarm.ModelId, (string?)list["data"]![0]!["id"]);
        Assert.Equal(HttpStatusCode.OK, (await Http.GetAsync($"/v1/models/{Swarm.ModelId}")).StatusCode);
        var missing = await Http.GetAsync("/v1/models/gpt-5");
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        Assert.Equal("model_not_found", (string?)(await JsonAsync(missing))["error"]!["code"]);
    }

    [Fact]
    public async Task Chat_stream_and_whole_answer_agree_under_greedy()
    {
        var whole = await JsonAsync(await PostAsync("/v1/chat/completions", Chat(false)));
        Assert.Equal("chat.completion", (string?)whole["object"]);
        var text = (string)whole["choices"]![0]!["message"]!["content"]!;
        Assert.NotEmpty(text);
        var usage = whole["usage"]!;
        Assert.Equal((int)usage["prompt_tokens"]! + (int)usage["completion_tokens"]!, (int)usage["total_tokens"]!);

        var events = await EventsAsync(await PostAsync("/v1/chat/completions", Chat(true, ""","stream_options":{"include_usage":true}""")));
        Assert.Equal("assistant", (string?)events[0]["choices"]![0]!["delta"]!["role"]);
        var streamed = string.Concat(events.Where(e => e["choices"]!.AsArray().Count > 0)
            .Select(e => (string?)e["choices"]![0]!["delta"]!["content"] ?? ""));
        Assert.Equal(text, streamed);
        var finish = events.Select(e => e["choices"]!.AsArray().FirstOrDefault()?["finish_reason"]).Last(f => f is not null);
        Assert.Equal((string?)whole["choices"]![0]!["finish_reason"], (string?)finish);
        Assert.Equal((int)usage["completion_tokens"]!, (int)events[^1]["usage"]!["completion_tokens"]!);
    }

    [Fact]
    public async Task Completions_take_text_or_token_ids_stream_and_echo()
    {
        var body = $$"""{"model":"{{Swarm.ModelId}}","prompt":"Once upon a time","temperature":0,"max_tokens":8,"seed":3}""";
        var whole = await JsonAsync(await PostAsync("/v1/completions", body));
        Assert.Equal("text_completion", (string?)whole["object"]);
        var text = (string)whole["choices"]![0]!["text"]!;
        var events = await EventsAsync(await PostAsync("/v1/completions", body.Replace("}", ""","stream":true}""")));
        Assert.Equal(text, string.Concat(events.Select(e => (string?)e["choices"]![0]!["text"])));
        Assert.Equal("length", (string?)events[^1]["choices"]![0]!["finish_reason"]);

        var ids = string.Join(",", Swarm.Local.Tokenizer!.Encode("Once upon a time"));
        var byIds = await JsonAsync(await PostAsync("/v1/completions", body.Replace("\"Once upon a time\"", $"[{ids}]")));
        Assert.Equal(text, (string?)byIds["choices"]![0]!["text"]);
        var echoed = await JsonAsync(await PostAsync("/v1/completions", body.Replace("}", ""","echo":true}""")));
        Assert.Equal("Once upon a time" + text, (string?)echoed["choices"]![0]!["text"]);
    }

    [Theory]
    [InlineData("{not json", 400, null)]
    [InlineData("""{"model":"MODEL","messages":[{"role":"user","content":"x"}],"n":2}""", 400, "n")]
    [InlineData("""{"model":"MODEL","messages":[{"role":"user","content":"x"}],"stop":7}""", 400, "stop")]
    [InlineData("""{"model":"MODEL","messages":[{"role":"user","content":"x"}],"temperature":5}""", 400, "temperature")]
    [InlineData("""{"model":"MODEL","messages":[{"role":"wizard","content":"x"}]}""", 400, "messages[0].role")]
    [InlineData("""{"model":"MODEL","messages":[]}""", 400, "messages")]
    [InlineData("""{"model":"MODEL","messages":[{"role":"user","content":"x"}],"max_tokens":100000}""", 400, null)]
    [InlineData("""{"model":"nope","messages":[{"role":"user","content":"x"}]}""", 404, "model")]
    [InlineData("""{"model":"MODEL","messages":[{"role":"user","content":"x"}],"petals":{"speculative":7}}""", 400, "petals.speculative")]
    [InlineData("""{"model":"MODEL","messages":[{"role":"user","content":"x"}],"petals":{"speculative":"fast"}}""", 400, null)]
    [InlineData("""{"model":"MODEL","messages":[{"role":"user","content":"x"}],"petals":{"speculative":"draft-model"}}""", 400, null)]
    public async Task Bad_requests_get_openai_errors(string body, int status, string? param)
    {
        var r = await PostAsync("/v1/chat/completions", body.Replace("MODEL", Swarm.ModelId));
        Assert.Equal(status, (int)r.StatusCode);
        var error = (await JsonAsync(r))["error"]!;
        Assert.Equal(status == 400 ? "invalid_request_error" : "invalid_request_error", (string?)error["type"]);
        Assert.False(string.IsNullOrEmpty((string?)error["message"]));
        Assert.Equal(param, (string?)error["param"]);
    }

    [Fact]
    public async Task Unknown_routes_and_methods_get_404_and_405()
    {
        var get = await Http.GetAsync("/v1/chat/completions");
        Assert.Equal(HttpStatusCode.MethodNotAllowed, get.StatusCode);
        Assert.NotNull((await JsonAsync(get))["error"]);
        var unknown = await PostAsync("/v1/embeddingz", "{}");
        Assert.Equal(HttpStatusCode.NotFound, unknown.StatusCode);
        Assert.NotNull((await JsonAsync(unknown))["error"]);
    }

    [Fact]
    public async Task Concurrent_requests_each_get_their_own_session()
    {
        var answers = await Task.WhenAll(Enumerable.Range(0, 3).Select(async _ =>
            (string)(await JsonAsync(await PostAsync("/v1/chat/completions", Chat(false))))["choices"]![0]!["message"]!["content"]!));
        Assert.Single(answers.Distinct());
    }

    [Fact]
    public async Task The_petals_field_reports_the_route_and_steers_it_per_request()
    {
        var routed = await JsonAsync(await PostAsync("/v1/chat/completions", Chat(false, ""","petals":{"show_route":true,"ignore_eos":true}""")));
        var route = (string)routed["petals_route"]!;
        Assert.Equal($"route: {Swarm.Servers[0].Address}[0:1] {Swarm.Servers[1].Address}[1:2]", route);
        Assert.Equal(10, (int)routed["usage"]!["completion_tokens"]!);   // ignore_eos: all max_tokens are generated

        // Blocking the only holder of block 0 leaves the swarm unable to serve this request (503), not others.
        var blocked = await PostAsync("/v1/chat/completions", Chat(false, $$$""","petals":{"blocked_servers":["{{{Swarm.Servers[0].Address}}}"]}"""));
        Assert.Equal(HttpStatusCode.ServiceUnavailable, blocked.StatusCode);
        Assert.Equal("swarm_unavailable", (string?)(await JsonAsync(blocked))["error"]!["code"]);
        var adapter = await PostAsync("/v1/chat/completions", Chat(false, ""","petals":{"adapter":"no-such-lora"}"""));
        Assert.Equal(HttpStatusCode.ServiceUnavailable, adapter.StatusCode);
        Assert.Contains("no-such-lora", (string?)(await JsonAsync(adapter))["error"]!["message"]);

        var unknown = await PostAsync("/v1/chat/completions", Chat(false, ""","petals":{"route":"fast"}"""));
        Assert.Equal(HttpStatusCode.BadRequest, unknown.StatusCode);
        Assert.Equal("petals.route", (string?)(await JsonAsync(unknown))["error"]!["param"]);
        var objectList = await PostAsync("/v1/chat/completions", Chat(false, ""","petals":{"allowed_servers":{"a":1}}"""));
        Assert.Equal("petals.allowed_servers", (string?)(await JsonAsync(objectList))["error"]!["param"]);
        var badType = await PostAsync("/v1/completions", $$$"""{"model":"{{{Swarm.ModelId}}}","prompt":"x","petals":{"show_route":"often"}}""");
        Assert.Equal(HttpStatusCode.BadRequest, badType.StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await PostAsync("/v1/chat/completions", Chat(false))).StatusCode);
    }
}
