namespace PetalsSharp.Hub;

/// <summary>
/// Where the hub and its cache are, read from the same environment variables as huggingface_hub, so a Python
/// user's cache and token are shared: <c>HF_ENDPOINT</c>, <c>HF_TOKEN</c>, <c>HF_HUB_OFFLINE</c>,
/// <c>HF_HUB_CACHE</c> / <c>HF_HOME</c>.
/// </summary>
public sealed record HubSettings
{
    public const string DefaultEndpoint = "https://huggingface.co";

    /// <summary>The hub's base URL, without a trailing slash.</summary>
    public string Endpoint { get; init; } = DefaultEndpoint;

    /// <summary>Sent as <c>Authorization: Bearer</c> to the hub (never to a CDN host, never logged).</summary>
    public string? Token { get; init; }

    /// <summary>Resolve from the cache only; no request is made.</summary>
    public bool Offline { get; init; }

    /// <summary>The hub cache folder holding <c>models--ORG--NAME</c> folders.</summary>
    public string CacheDir { get; init; } = DefaultCacheDir(null);

    /// <summary>Reads the settings from the environment (or from <paramref name="env"/>, for tests).</summary>
    public static HubSettings FromEnvironment(IReadOnlyDictionary<string, string?>? env = null)
    {
        string? Get(string name) => env is not null ? env.GetValueOrDefault(name) : Environment.GetEnvironmentVariable(name);
        string? endpoint = Get("HF_ENDPOINT");
        string? token = Get("HF_TOKEN");
        return new HubSettings
        {
            Endpoint = string.IsNullOrWhiteSpace(endpoint) ? DefaultEndpoint : endpoint.TrimEnd('/'),
            Token = string.IsNullOrWhiteSpace(token) ? ReadTokenFile(Get) : token.Trim(),
            Offline = IsTrue(Get("HF_HUB_OFFLINE")),
            CacheDir = DefaultCacheDir(Get),
        };
    }

    static string DefaultCacheDir(Func<string, string?>? get)
    {
        get ??= Environment.GetEnvironmentVariable;
        if (get("HF_HUB_CACHE") is { Length: > 0 } hub) return Expand(hub);
        return Path.Combine(HfHome(get), "hub");
    }

    static string HfHome(Func<string, string?> get)
    {
        if (get("HF_HOME") is { Length: > 0 } home) return Expand(home);
        string xdg = get("XDG_CACHE_HOME") is { Length: > 0 } x ? Expand(x) : Path.Combine(UserHome(), ".cache");
        return Path.Combine(xdg, "huggingface");
    }

    // huggingface-cli login stores the token in $HF_HOME/token.
    static string? ReadTokenFile(Func<string, string?> get)
    {
        string path = get("HF_TOKEN_PATH") is { Length: > 0 } p ? Expand(p) : Path.Combine(HfHome(get), "token");
        try
        {
            return File.Exists(path) && File.ReadAllText(path).Trim() is { Length: > 0 } t ? t : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    static string UserHome() => Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);

    static string Expand(string path) => path.StartsWith("~/", StringComparison.Ordinal) ? Path.Combine(UserHome(), path[2..]) : path;

    static bool IsTrue(string? v) => v?.Trim().ToLowerInvariant() is "1" or "on" or "yes" or "true";
}
