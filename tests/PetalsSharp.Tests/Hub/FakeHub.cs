using System.Collections.Concurrent;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace PetalsSharp.Tests.Hub;

/// <summary>
/// A Hugging Face Hub stand-in on 127.0.0.1: <c>/{org}/{name}/resolve/{revision}/{file}</c> with the hub's HEAD
/// metadata (X-Repo-Commit, ETag / X-Linked-Etag, X-Linked-Size), a 302 to a "CDN" path for *.safetensors
/// (LFS) files, and Range support there. Faults can be injected per file.
/// </summary>
public sealed class FakeHub : IAsyncDisposable
{
    public sealed record Request(string Method, string Path, string? Range, string? Authorization);

    sealed record Repo(string Commit, Dictionary<string, byte[]> Files);

    readonly WebApplication _app;
    readonly ConcurrentDictionary<string, Repo> _repos = new();
    readonly ConcurrentDictionary<string, byte[]> _cdn = new();

    public ConcurrentQueue<Request> Requests { get; } = new();

    /// <summary>Files whose next CDN download is cut off halfway (the connection is aborted).</summary>
    public ConcurrentDictionary<string, bool> DropOnce { get; } = new();

    /// <summary>Files served with their bytes altered (same size, so only the hash check catches it).</summary>
    public ConcurrentDictionary<string, bool> Corrupt { get; } = new();

    public string Endpoint { get; private set; } = "";

    /// <summary>Old repo name → new one, answered with a relative 307 as the hub does.</summary>
    public ConcurrentDictionary<string, string> Renamed { get; } = new();

    /// <summary>The "CDN": the same server under another host name, as the hub's LFS redirects go to another host.</summary>
    string CdnBase => Endpoint.Replace("127.0.0.1", "localhost");

    FakeHub(WebApplication app) => _app = app;

    public static async Task<FakeHub> StartAsync()
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [] });
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, 0));
        var app = builder.Build();
        var hub = new FakeHub(app);
        app.MapMethods("/{org}/{name}/resolve/{revision}/{**file}", ["GET", "HEAD"], hub.Resolve);
        app.MapGet("/cdn/{sha}/{file}", hub.Cdn);
        await app.StartAsync();
        hub.Endpoint = "http://" + app.Urls.First().Replace("http://", "");
        return hub;
    }

    /// <summary>Publishes every file of <paramref name="dir"/> as <paramref name="repo"/> at a commit derived from the contents.</summary>
    public string Publish(string repo, string dir)
    {
        var files = Directory.GetFiles(dir).ToDictionary(f => Path.GetFileName(f), File.ReadAllBytes, StringComparer.Ordinal);
        string commit = Convert.ToHexStringLower(SHA1.HashData(Encoding.UTF8.GetBytes(repo + string.Join(",", files.Select(f => f.Key + Sha256(f.Value))))));
        _repos[repo] = new Repo(commit, files);
        foreach (var (name, bytes) in files) if (IsLfs(name)) _cdn[Sha256(bytes)] = bytes;
        return commit;
    }

    public IEnumerable<Request> Downloads => Requests.Where(r => r.Method == "GET");

    static bool IsLfs(string file) => file.EndsWith(".safetensors", StringComparison.Ordinal);

    public static string Sha256(byte[] bytes) => Convert.ToHexStringLower(SHA256.HashData(bytes));

    public static string GitSha1(byte[] bytes) =>
        Convert.ToHexStringLower(SHA1.HashData([.. Encoding.ASCII.GetBytes($"blob {bytes.Length}\0"), .. bytes]));

    void Record(HttpContext ctx) => Requests.Enqueue(new Request(ctx.Request.Method, ctx.Request.Path.Value!,
        ctx.Request.Headers.Range.FirstOrDefault(), ctx.Request.Headers.Authorization.FirstOrDefault()));

    async Task Resolve(HttpContext ctx, string org, string name, string revision, string file)
    {
        Record(ctx);
        var r = ctx.Response;
        if (Renamed.TryGetValue(org + "/" + name, out var now))
        {
            r.StatusCode = 307;   // a renamed repo: the hub answers with a relative redirect
            r.Headers.Location = $"/{now}/resolve/{revision}/{file}";
            return;
        }
        if (!_repos.TryGetValue(org + "/" + name, out var repo)) { NotFound(r, "RepoNotFound"); return; }
        if (revision != "main" && revision != repo.Commit) { NotFound(r, "RevisionNotFound"); return; }
        if (!repo.Files.TryGetValue(file, out var bytes)) { NotFound(r, "EntryNotFound"); return; }
        r.Headers["X-Repo-Commit"] = repo.Commit;
        if (IsLfs(file))
        {
            string sha = Sha256(bytes);
            r.StatusCode = 302;
            r.Headers.ETag = $"\"{sha}\"";
            r.Headers["X-Linked-Etag"] = $"\"{sha}\"";
            r.Headers["X-Linked-Size"] = bytes.Length.ToString();
            r.Headers.Location = $"{CdnBase}/cdn/{sha}/{file}";
            return;
        }
        r.Headers.ETag = $"\"{GitSha1(bytes)}\"";
        r.ContentLength = bytes.Length;
        if (ctx.Request.Method == "GET") await r.Body.WriteAsync(bytes);
    }

    async Task Cdn(HttpContext ctx, string sha, string file)
    {
        Record(ctx);
        if (!_cdn.TryGetValue(sha, out var bytes)) { ctx.Response.StatusCode = 404; return; }
        if (Corrupt.ContainsKey(file)) { bytes = (byte[])bytes.Clone(); bytes[^1] ^= 0xff; }
        long from = 0;
        if (ctx.Request.Headers.Range.FirstOrDefault() is { } range && range.StartsWith("bytes=") && range.EndsWith('-'))
        {
            from = long.Parse(range["bytes=".Length..^1]);
            ctx.Response.StatusCode = 206;
            ctx.Response.Headers.ContentRange = $"bytes {from}-{bytes.Length - 1}/{bytes.Length}";
        }
        ctx.Response.ContentLength = bytes.Length - from;
        if (DropOnce.TryRemove(file, out _))
        {
            // Half the body, flushed so the client has it, then the connection goes away.
            await ctx.Response.Body.WriteAsync(bytes.AsMemory((int)from, (int)(bytes.Length - from) / 2));
            await ctx.Response.Body.FlushAsync();
            await Task.Delay(100);
            ctx.Abort();
            return;
        }
        await ctx.Response.Body.WriteAsync(bytes.AsMemory((int)from));
    }

    static void NotFound(HttpResponse r, string code)
    {
        r.StatusCode = 404;
        r.Headers["X-Error-Code"] = code;
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
