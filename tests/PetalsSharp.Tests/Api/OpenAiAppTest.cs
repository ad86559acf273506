using System.Text;
using Microsoft.AspNetCore.Builder;
using PetalsSharp.Api.OpenAi;
using Xunit;

namespace PetalsSharp.Tests.Api;

/// <summary>The OpenAI-compatible app over the api swarm's servers, in-process on an ephemeral port, per test.</summary>
public abstract class OpenAiAppTest(ApiSwarm swarm) : IAsyncLifetime
{
    WebApplication _app = null!;

    protected ApiSwarm Swarm => swarm;
    protected HttpClient Http { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        _app = OpenAiServer.Build(swarm.RemoteChat(), "127.0.0.1", 0);
        await _app.StartAsync();
        Http = new HttpClient { BaseAddress = new Uri(OpenAiServer.Url(_app)), Timeout = TimeSpan.FromMinutes(2) };
    }

    public async Task DisposeAsync()
    {
        Http.Dispose();
        await _app.DisposeAsync();
    }

    protected Task<HttpResponseMessage> PostJsonAsync(string path, string json) =>
        Http.PostAsync(path, new StringContent(json, Encoding.UTF8, "application/json"));
}
