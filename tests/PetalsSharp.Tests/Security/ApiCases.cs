using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;

namespace PetalsSharp.Tests.Security;

/// <summary>
/// The HTTP API (<c>petals api</c>): bodies that are not JSON or are cut short, fields of the wrong type or range,
/// huge <c>max_tokens</c> and <c>n</c>, text that is not UTF-8, bodies past the size limit, and routes or methods
/// that do not exist. Every one must be answered with an OpenAI error object and a 4xx status.
/// </summary>
static class ApiCases
{
    const string S = "HTTP API";
    const string Model = CampaignSwarm.ModelId;
    const string Completions = "/v1/completions", Chat = "/v1/chat/completions", Embeddings = "/v1/embeddings";
    static readonly string[] Bad = ["HTTP 400"];

    /// <summary>Sends a request and reads the OpenAI error object; anything else is reported as what it was.</summary>
    static async Task<Outcome> SendAsync(CampaignSwarm swarm, HttpMethod method, string path, byte[]? body)
    {
        using var request = new HttpRequestMessage(method, path);
        if (body is not null)
        {
            request.Content = new ByteArrayContent(body);
            request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
            // A body past the limit is refused from its Content-Length; without waiting for that answer the upload
            // would run into the closed connection and report the client's write error instead of the 413.
            if (body.Length > 1 << 20) request.Headers.ExpectContinue = true;
        }
        using var reply = await swarm.Http.SendAsync(request);
        var text = await reply.Content.ReadAsStringAsync();
        string status = $"HTTP {(int)reply.StatusCode}";
        try
        {
            if (JsonNode.Parse(text)?["error"] is JsonObject error && (string?)error["message"] is { } message && (string?)error["type"] is { } type)
                return new Outcome(status, $"{type}: {message}");
        }
        catch (System.Text.Json.JsonException) { }
        return new Outcome($"{status} without an error object", text.Length > 200 ? text[..200] : text);
    }

    static HostileCase Post(CampaignSwarm swarm, string category, string name, string path, byte[] body, params string[] expected) =>
        new(S, category, $"{path}: {name}", expected.Length == 0 ? Bad : expected, () => SendAsync(swarm, HttpMethod.Post, path, body));

    static HostileCase Post(CampaignSwarm swarm, string category, string name, string path, string body, params string[] expected) =>
        Post(swarm, category, name, path, Encoding.UTF8.GetBytes(body), expected);

    /// <summary>A valid body of each endpoint, with <paramref name="field"/> (<c>"key":value</c>) replacing or adding that key.</summary>
    static string Body(string path, string? field = null)
    {
        List<(string Key, string Value)> fields = path switch
        {
            Completions => [("model", $"\"{Model}\""), ("prompt", "\"Once upon a time\""), ("max_tokens", "2"), ("temperature", "0")],
            Chat => [("model", $"\"{Model}\""), ("messages", """[{"role":"user","content":"Hi"}]"""), ("max_tokens", "2"), ("temperature", "0")],
            _ => [("model", $"\"{Model}\""), ("input", "\"Once upon a time\"")],
        };
        if (field is not null)
        {
            int colon = field.IndexOf("\":", StringComparison.Ordinal);
            var key = field[1..colon];
            fields.RemoveAll(f => f.Key == key);
            fields.Add((key, field[(colon + 2)..]));
        }
        return "{" + string.Join(",", fields.Select(f => $"\"{f.Key}\":{f.Value}")) + "}";
    }

    public static IEnumerable<HostileCase> All(CampaignSwarm swarm) =>
        MalformedJson(swarm).Concat(Truncated(swarm)).Concat(WrongTypes(swarm)).Concat(Huge(swarm)).Concat(Utf8(swarm)).Concat(Oversized(swarm)).Concat(Routes(swarm));

    static IEnumerable<HostileCase> MalformedJson(CampaignSwarm swarm)
    {
        const string C = "malformed JSON";
        var bodies = new (string Name, string Body)[]
        {
            ("empty body", ""), ("only '{'", "{"), ("a JSON array", "[]"), ("JSON null", "null"), ("a JSON string", "\"text\""), ("a number", "42"),
            ("trailing comma", $$"""{"model":"{{Model}}",}"""), ("single quotes", $"{{'model':'{Model}'}}"), ("unquoted key", $$"""{model:"{{Model}}"}"""),
            ("text after the object", Body(Completions) + " garbage"), ("missing comma", $$"""{"model":"{{Model}}" "prompt":"x"}"""),
            ("NaN literal", $$"""{"model":"{{Model}}","prompt":"x","temperature":NaN}"""), ("a comment", $$"""{/* hi */"model":"{{Model}}"}"""),
            ("raw newline in a string", $$"""{"model":"{{Model}}","prompt":"a{{"\n"}}b"}"""), ("invalid escape", $$"""{"model":"{{Model}}","prompt":"\x"}"""),
            ("short unicode escape", $$"""{"model":"{{Model}}","prompt":"\u12"}"""), ("nested 10000 deep", new string('[', 10_000) + new string(']', 10_000)),
            ("object nested 1000 deep", string.Concat(Enumerable.Repeat("{\"a\":", 1000)) + "1" + new string('}', 1000)),
        };
        foreach (var (name, body) in bodies) yield return Post(swarm, C, name, Completions, body);
        foreach (var path in new[] { Chat, Embeddings })
            foreach (var (name, body) in bodies.Take(6).Append(bodies[16]))
                yield return Post(swarm, C, name, path, body);
    }

    static IEnumerable<HostileCase> Truncated(CampaignSwarm swarm)
    {
        foreach (var path in new[] { Completions, Chat })
        {
            var body = Body(path);
            foreach (var cut in new[] { 1, 9, 10, 21, body.Length / 2, body.Length - 2, body.Length - 1 })
                yield return Post(swarm, "truncated message", $"body cut to {cut} of {body.Length} bytes", path, body[..cut]);
        }
    }

    static IEnumerable<HostileCase> WrongTypes(CampaignSwarm swarm)
    {
        const string C = "wrong type or value";
        var completions = new[]
        {
            "\"prompt\":5", "\"prompt\":{}", "\"prompt\":true", "\"prompt\":[]", "\"prompt\":[[1,2]]", "\"prompt\":[-1]", "\"prompt\":[600]", "\"prompt\":[1.5]",
            "\"prompt\":[\"a\",\"b\"]", "\"model\":5", "\"stream\":\"yes\"", "\"echo\":1", "\"temperature\":-1", "\"temperature\":3", "\"temperature\":\"hot\"",
            "\"top_p\":1.5", "\"top_p\":-0.1", "\"top_k\":-1", "\"frequency_penalty\":5", "\"presence_penalty\":-3", "\"seed\":1.5", "\"seed\":\"x\"",
            "\"stop\":5", "\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]", "\"stop\":[1]", "\"logprobs\":5", "\"suffix\":\"x\"", "\"logit_bias\":{\"1\":5}", "\"best_of\":3",
            "\"repetition_penalty\":-1", "\"petals\":\"x\"", "\"petals\":{\"unknown\":1}", "\"petals\":{\"allowed_servers\":5}", "\"petals\":{\"ignore_eos\":\"yes\"}",
            "\"petals\":{\"adapter\":5}", "\"petals\":{\"speculative\":5}",
        };
        foreach (var field in completions)
            yield return Post(swarm, C, field, Completions, Body(Completions, field));
        yield return Post(swarm, C, "no model", Completions, """{"prompt":"x"}""");
        yield return Post(swarm, C, "no prompt", Completions, $$"""{"model":"{{Model}}"}""");
        yield return Post(swarm, C, "a model that does not exist", Completions, """{"model":"gpt-4","prompt":"x"}""", "HTTP 404");
        var chat = new[]
        {
            """{"role":"user"}""", """[1]""", """[{"content":"x"}]""", """[{"role":"wizard","content":"x"}]""", """[{"role":"user","content":5}]""",
            """[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]""", """[{"role":"user","content":[{"type":"text"}]}]""",
        };
        foreach (var messages in chat)
            yield return Post(swarm, C, $"messages {messages}", Chat, $$"""{"model":"{{Model}}","messages":{{messages}}}""");
        yield return Post(swarm, C, "messages []", Chat, $$"""{"model":"{{Model}}","messages":[]}""");
        yield return Post(swarm, C, "tools", Chat, Body(Chat, "\"tools\":[{\"type\":\"function\"}]"));
        foreach (var input in new[] { "5", "[]", "[\"\"]", "[[]]", "[[-1]]", "[[600]]", "[1.5]", "[\"a\",[1]]", "{}" })
            yield return Post(swarm, C, $"input {input}", Embeddings, $$"""{"model":"{{Model}}","input":{{input}}}""");
        foreach (var field in new[] { "\"encoding_format\":\"hex\"", "\"dimensions\":3", "\"petals\":{\"ignore_eos\":true}" })
            yield return Post(swarm, C, field, Embeddings, Body(Embeddings, field));
        yield return Post(swarm, C, "no input", Embeddings, $$"""{"model":"{{Model}}"}""");
    }

    static IEnumerable<HostileCase> Huge(CampaignSwarm swarm)
    {
        const string C = "huge max_tokens or n";
        foreach (var value in new[] { "2147483647", "2147483648", "9223372036854775807", "1e30", "-1", "-2147483648", "1.5", "\"100\"", "513", "100000", "1e400" })
        {
            yield return Post(swarm, C, $"max_tokens {value}", Completions, Body(Completions, $"\"max_tokens\":{value}"));
            if (value is "2147483647" or "-1" or "1e30")
                yield return Post(swarm, C, $"max_tokens {value}", Chat, Body(Chat, $"\"max_tokens\":{value}"));
        }
        yield return Post(swarm, C, "max_completion_tokens 1000000000", Chat, Body(Chat, "\"max_completion_tokens\":1000000000"));
        foreach (var n in new[] { "0", "-1", "2", "1000000", "1e9" })
            yield return Post(swarm, C, $"n {n}", Completions, Body(Completions, $"\"n\":{n}"));
        yield return Post(swarm, C, "top_k 1e20", Completions, Body(Completions, "\"top_k\":1e20"));
        yield return Post(swarm, C, "temperature 1e308", Completions, Body(Completions, "\"temperature\":1e308"));
        yield return Post(swarm, C, "2049 inputs", Embeddings, $$"""{"model":"{{Model}}","input":[{{string.Join(",", Enumerable.Repeat("\"a\"", 2049))}}]}""");
    }

    static IEnumerable<HostileCase> Utf8(CampaignSwarm swarm)
    {
        const string C = "invalid UTF-8";
        var patterns = new (string Name, byte[] Bytes)[]
        {
            ("0xFF", [0xFF]), ("lone continuation 0x80", [0x80]), ("overlong NUL C0 80", [0xC0, 0x80]), ("surrogate ED A0 80", [0xED, 0xA0, 0x80]),
            ("cut 3-byte E2 82", [0xE2, 0x82]), ("5-byte F8 88 80 80 80", [0xF8, 0x88, 0x80, 0x80, 0x80]), ("above U+10FFFF F4 90 80 80", [0xF4, 0x90, 0x80, 0x80]),
        };
        // \u0001 marks where the raw bytes go; it never appears in the templates otherwise.
        var fields = new (string Field, string Path, string Template)[]
        {
            ("prompt", Completions, $$"""{"model":"{{Model}}","prompt":"ab\u0001c","max_tokens":1}"""),
            ("message content", Chat, $$"""{"model":"{{Model}}","messages":[{"role":"user","content":"ab\u0001c"}],"max_tokens":1}"""),
            ("model", Completions, """{"model":"st\u0001ories","prompt":"x","max_tokens":1}"""),
        };
        foreach (var (pattern, bytes) in patterns)
            foreach (var (field, path, template) in fields)
                yield return Post(swarm, C, $"{field} with {pattern}", path, Splice(template, bytes));
        foreach (var (field, path, template) in new[]
                 {
                     ("a field name", Completions, $$"""{"model":"{{Model}}","prompt":"x","k\u0001":1}"""),
                     ("stop", Completions, $$"""{"model":"{{Model}}","prompt":"x","stop":"\u0001"}"""),
                     ("role", Chat, $$"""{"model":"{{Model}}","messages":[{"role":"us\u0001er","content":"x"}]}"""),
                     ("embeddings input", Embeddings, $$"""{"model":"{{Model}}","input":"a\u0001"}"""),
                 })
            yield return Post(swarm, C, $"{field} with 0xFF", path, Splice(template, [0xFF]));
        foreach (var escape in new[] { @"\ud800", @"\udfff", @"\udc00\ud800", @"a\ud83d" })
        {
            yield return Post(swarm, C, $"prompt with the escape {escape}", Completions, $$"""{"model":"{{Model}}","prompt":"{{escape}}","max_tokens":1}""");
            yield return Post(swarm, C, $"content with the escape {escape}", Chat, $$"""{"model":"{{Model}}","messages":[{"role":"user","content":"{{escape}}"}]}""");
        }
        yield return Post(swarm, C, @"embeddings input with the escape \ud800", Embeddings, $$"""{"model":"{{Model}}","input":"\ud800"}""");
        yield return Post(swarm, C, @"a field name with the escape \ud800", Completions, $$"""{"model":"{{Model}}","prompt":"x","\ud800":1}""");
    }

    static byte[] Splice(string template, byte[] bytes)
    {
        var utf8 = Encoding.UTF8.GetBytes(template.Replace(@"\u0001", "\u0001"));
        int at = Array.IndexOf(utf8, (byte)1);
        return [.. utf8[..at], .. bytes, .. utf8[(at + 1)..]];
    }

    static IEnumerable<HostileCase> Oversized(CampaignSwarm swarm)
    {
        const string C = "oversized message";
        var words = string.Concat(Enumerable.Repeat("hello wor ", 210_000));   // 2.1 MB: past the 2 MB body limit
        yield return Post(swarm, C, "body of 2.1 MB", Completions, $$"""{"model":"{{Model}}","prompt":"{{words}}"}""", "HTTP 413");
        yield return Post(swarm, C, "body of 2.1 MB", Chat, $$"""{"model":"{{Model}}","messages":[{"role":"user","content":"{{words}}"}]}""", "HTTP 413");
        yield return Post(swarm, C, "body of 2.1 MB", Embeddings, $$"""{"model":"{{Model}}","input":"{{words}}"}""", "HTTP 413");
        var long600k = words[..600_000];
        yield return Post(swarm, C, "prompt of 600 KB", Completions, $$"""{"model":"{{Model}}","prompt":"{{long600k}}"}""");
        yield return Post(swarm, C, "content of 600 KB", Chat, $$"""{"model":"{{Model}}","messages":[{"role":"user","content":"{{long600k}}"}]}""");
        yield return Post(swarm, C, "input of 600 KB", Embeddings, $$"""{"model":"{{Model}}","input":"{{long600k}}"}""");
        yield return Post(swarm, C, "prompt of 600 tokens", Completions, $$"""{"model":"{{Model}}","prompt":"{{words[..3000]}}","max_tokens":1}""");
        yield return Post(swarm, C, "prompt of 1000 token ids", Completions, $$"""{"model":"{{Model}}","prompt":[{{string.Join(",", Enumerable.Repeat(5, 1000))}}]}""");
    }

    static IEnumerable<HostileCase> Routes(CampaignSwarm swarm)
    {
        const string C = "wrong route or method";
        foreach (var (method, path) in new[] { (HttpMethod.Get, Completions), (HttpMethod.Put, Chat), (HttpMethod.Delete, Embeddings), (HttpMethod.Patch, Completions) })
            yield return new(S, C, $"{method} {path}", ["HTTP 405"], () => SendAsync(swarm, method, path, method == HttpMethod.Get ? null : Encoding.UTF8.GetBytes(Body(path))));
        foreach (var path in new[] { "/v1/unknown", "/v1/completions/extra", "/v1/engines/x/completions" })
            yield return new(S, C, $"POST {path}", ["HTTP 404"], () => SendAsync(swarm, HttpMethod.Post, path, Encoding.UTF8.GetBytes(Body(Completions))));
        yield return new(S, C, "GET /v1/models/no-such-model", ["HTTP 404"], () => SendAsync(swarm, HttpMethod.Get, "/v1/models/no-such-model", null));
    }
}
