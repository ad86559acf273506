using System.Reflection;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace PetalsSharp.Api.Dashboard;

/// <summary>
/// The dashboard's routes: the page and its script and style (embedded in this assembly, no CDN) and
/// <c>GET api/v1/swarm</c> (the <see cref="SwarmView"/> as JSON), under any prefix of any ASP.NET Core app.
/// </summary>
public static class DashboardEndpoints
{
    /// <summary>snake_case names, as the rest of Petals' JSON.</summary>
    public static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web)
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
    };

    static readonly Dictionary<string, (string File, string ContentType)> Assets = new()
    {
        ["dashboard.js"] = ("dashboard.js", "text/javascript; charset=utf-8"),
        ["dashboard.css"] = ("dashboard.css", "text/css; charset=utf-8"),
    };

    /// <summary>
    /// Maps the dashboard under <paramref name="prefix"/> ("" = the site root, or e.g. "/dashboard"): the page at
    /// <c>{prefix}/</c>, the JSON at <c>{prefix}/api/v1/swarm</c>. <paramref name="view"/> returns the latest view,
    /// e.g. <c>() =&gt; watcher.Current</c>.
    /// </summary>
    public static RouteGroupBuilder MapDashboard(this IEndpointRouteBuilder endpoints, Func<SwarmView> view, string prefix = "")
    {
        ArgumentNullException.ThrowIfNull(view);
        prefix = "/" + prefix.Trim('/');
        var basePath = prefix == "/" ? "/" : prefix + "/";
        var page = Resource("index.html").Replace("{{BASE}}", basePath, StringComparison.Ordinal);
        var group = endpoints.MapGroup(prefix);
        // The page uses relative links: "/dashboard" must become "/dashboard/" for them to resolve under the prefix.
        group.MapGet("/", (HttpContext c) => !c.Request.Path.Value!.EndsWith('/') && prefix != "/"
            ? Results.Redirect(basePath)
            : Results.Content(page, "text/html; charset=utf-8"));
        foreach (var (name, (file, type)) in Assets)
        {
            var text = Resource(file);
            group.MapGet("/" + name, () => Results.Content(text, type));
        }
        group.MapGet("/api/v1/swarm", (HttpContext c) =>
        {
            c.Response.Headers.CacheControl = "no-store";
            return Results.Json(view(), Json);
        });
        return group;
    }

    /// <summary>An embedded file of the page (Dashboard/wwwroot in the source tree).</summary>
    public static string Resource(string file)
    {
        var name = $"PetalsSharp.Api.Dashboard.{file}";
        using var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream(name)
            ?? throw new InvalidOperationException($"embedded resource {name} is missing");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }
}
