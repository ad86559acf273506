namespace PetalsSharp.Api;

/// <summary>
/// Front doors over a model, local or distributed: the OpenAI-compatible HTTP endpoints, <c>IChatClient</c>,
/// embeddings, and the swarm dashboard. Kept out of the core library so servers need no web UI code.
/// </summary>
public static class ApiAssembly
{
    public static string Version => typeof(ApiAssembly).Assembly.GetName().Version?.ToString() ?? "0.0.0";
}
