using Microsoft.Playwright;
using PetalsSharp.Api.Dashboard;
using PetalsSharp.Dht;
using PetalsSharp.Server;
using PetalsSharp.Tests.Swarm;
using Xunit;
using Xunit.Abstractions;

namespace PetalsSharp.Tests.Dashboard;

/// <summary>
/// A real swarm (a DHT node and three server processes), the dashboard, and headless Chromium driven by Playwright:
/// the page lists the servers and the coverage of every block, and marks a killed server GONE once its records expire.
/// </summary>
[Trait("Category", "Processes")]
[Collection(LlamaSwarmCollection.Name)]   // not in parallel with the other swarm tests: the machine is small
public sealed class DashboardBrowserTests(ITestOutputHelper output)
{
    static readonly string Model = LlamaSwarm.ModelDir;

    /// <summary>Where the screenshot goes: the test output folder's artifacts/ (kept after the run).</summary>
    static string Artifact(string name)
    {
        var dir = System.IO.Path.Combine(AppContext.BaseDirectory, "artifacts");
        Directory.CreateDirectory(dir);
        return System.IO.Path.Combine(dir, name);
    }

    static Task<ServerProcess> StartServerAsync(DhtNode dht, int start, int end, string name, int throughput) =>
        ServerProcess.StartAsync(Model, start, end, "--initial-peers", dht.PeerAddress, "--update-period", "1",
            "--throughput", throughput.ToString(), "--public-name", name);

    [SkippableFact]
    public async Task The_page_shows_servers_and_coverage_and_marks_a_killed_server_gone()
    {
        var why = Chromium.WhyMissing;
        Skip.If(why is not null, why);
        await using var dht = await DhtNode.StartAsync(new DhtNodeOptions { Host = "127.0.0.1", Port = 0 });
        var started = await Task.WhenAll(StartServerAsync(dht, 0, 2, "alpha", 100), StartServerAsync(dht, 1, 3, "beta", 50),
            StartServerAsync(dht, 2, 3, "gamma", 25));
        using var alpha = started[0];
        using var beta = started[1];
        using var gamma = started[2];
        await using var dashboard = await DashboardServer.StartAsync([dht.PeerAddress], null, "127.0.0.1", 0,
            new DashboardSettings { MinCoverage = 2, RefreshPeriod = TimeSpan.FromMilliseconds(500) });

        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
        {
            ExecutablePath = Chromium.Path, Headless = true, Args = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        });
        var page = await browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = 1280, Height = 860 } });
        var errors = new List<string>();
        page.PageError += (_, e) => errors.Add(e);
        await page.GotoAsync(dashboard.Url);

        // Three servers ONLINE; blocks covered 1, 2, 2 (alpha 0:2, beta 1:3, gamma 2:3) with summed throughput.
        await page.WaitForFunctionAsync("() => document.querySelectorAll('table.servers tr[data-state=ONLINE]').length === 3",
            null, new PageWaitForFunctionOptions { Timeout = 60_000 });
        var section = page.Locator("section.model[data-model='llama-gqa']");
        foreach (var (server, name) in new[] { (alpha, "alpha"), (beta, "beta"), (gamma, "gamma") })
        {
            var row = section.Locator($"tr[data-address='{server.Address}']");
            Assert.Equal("ONLINE", await row.GetAttributeAsync("data-state"));
            Assert.Equal(name, await row.Locator("td.name").TextContentAsync());
        }
        Assert.Equal("1:3", await section.Locator($"tr[data-address='{beta.Address}'] td[data-span]").GetAttributeAsync("data-span"));
        var blocks = section.Locator(".coverage .block");
        Assert.Equal(3, await blocks.CountAsync());
        Assert.Equal(["1", "2", "2"], await Attributes(blocks, "data-servers"));
        Assert.Equal(["low", "ok", "ok"], await Attributes(blocks, "data-status"));
        Assert.Contains("150", await blocks.Nth(1).GetAttributeAsync("title"));
        // --min-coverage 2: block 0 has one server.
        Assert.Equal(1, await page.Locator("#warnings li[data-kind='low_coverage']").CountAsync());
        // Pings between servers show up once the servers have measured them (every update period).
        await page.WaitForSelectorAsync($"table.pings tr[data-from='{alpha.Address}']", new PageWaitForSelectorOptions { Timeout = 30_000 });
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Artifact("dashboard-healthy.png"), FullPage = true });

        // A crash: records live twice the update period (2 s), so well within 15 s gamma is GONE and block 2 is thin.
        gamma.Kill();
        var watch = System.Diagnostics.Stopwatch.StartNew();
        await page.WaitForSelectorAsync($"tr[data-address='{gamma.Address}'][data-state='GONE']", new PageWaitForSelectorOptions { Timeout = 15_000 });
        output.WriteLine($"gamma marked GONE {watch.Elapsed.TotalSeconds:F1} s after the kill");
        await page.WaitForFunctionAsync("() => document.querySelector(\".coverage .block[data-block='2']\").dataset.servers === '1'");
        Assert.Equal(1, await page.Locator($"#warnings li[data-kind='server_gone'][data-peer-id]").CountAsync());
        Assert.Equal(2, await page.Locator("#warnings li[data-kind='low_coverage']").CountAsync());   // block 0 and block 2
        Assert.Equal("live", await page.Locator("#status").GetAttributeAsync("data-state"));

        var shot = Artifact("dashboard.png");
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = shot, FullPage = true });
        output.WriteLine($"screenshot: {shot}");
        Console.WriteLine($"dashboard screenshot: {shot}");
        Assert.Empty(errors);
    }

    static async Task<string[]> Attributes(ILocator items, string name)
    {
        var values = new List<string>();
        for (int i = 0; i < await items.CountAsync(); i++) values.Add(await items.Nth(i).GetAttributeAsync(name) ?? "");
        return [.. values];
    }
}
