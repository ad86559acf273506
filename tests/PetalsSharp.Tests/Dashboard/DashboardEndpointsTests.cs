using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.Logging;
using PetalsSharp.Api.Dashboard;
using Xunit;

namespace PetalsSharp.Tests.Dashboard;

/// <summary>MapDashboard under a prefix of another app, as <c>petals api</c> mounts it: page, assets and JSON.</summary>
public sealed class DashboardEndpointsTests
{
    [Fact]
    public async Task The_dashboard_mounts_under_a_prefix_with_its_embedded_page()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        await using var app = builder.Build();
        var view = SwarmView.Empty(3);
        app.MapDashboard(() => view, "/dashboard");
        await app.StartAsync();
        using var http = new HttpClient(new HttpClientHandler { AllowAutoRedirect = false }) { BaseAddress = new Uri(app.Urls.First()) };

        var redirect = await http.GetAsync("/dashboard");
        Assert.Equal("/dashboard/", redirect.Headers.Location?.OriginalString);
        var page = await http.GetStringAsync("/dashboard/");
        Assert.Contains("<base href=\"/dashboard/\">", page);
        Assert.DoesNotContain("http://", page.Replace("http://www.w3.org", ""));   // no CDN
        var js = await http.GetAsync("/dashboard/dashboard.js");
        Assert.Equal("text/javascript", js.Content.Headers.ContentType?.MediaType);
        Assert.Contains("api/v1/swarm", await js.Content.ReadAsStringAsync());
        Assert.Equal("text/css", (await http.GetAsync("/dashboard/dashboard.css")).Content.Headers.ContentType?.MediaType);

        var json = await http.GetAsync("/dashboard/api/v1/swarm");
        Assert.Equal("no-store", json.Headers.CacheControl?.ToString());
        using var doc = JsonDocument.Parse(await json.Content.ReadAsStringAsync());
        Assert.Equal(3, doc.RootElement.GetProperty("min_coverage").GetInt32());
        await app.StopAsync();
    }
}
