using System.Net;
using System.Net.Http.Headers;

namespace PetalsSharp.Hub;

/// <summary>What a HEAD on a resolve URL tells: the commit, the content's ETag and size, and where to fetch it from.</summary>
public sealed record HubFileInfo(string Commit, string Etag, long Size, Uri DownloadUri);

/// <summary>One file's download progress.</summary>
public sealed record HubProgress(string File, long Downloaded, long Total, bool Done = false);

/// <summary>
/// Talks to the hub's <c>{endpoint}/{repo}/resolve/{revision}/{file}</c> endpoints. Redirects are followed by hand
/// so the token goes only to the hub, never to the CDN host that large (LFS) files redirect to.
/// </summary>
public sealed class HubClient : IDisposable
{
    readonly HttpClient _http;
    readonly HubSettings _settings;

    public HubClient(HubSettings settings, HttpMessageHandler? handler = null)
    {
        _settings = settings;
        _http = new HttpClient(handler ?? new SocketsHttpHandler { AllowAutoRedirect = false, ConnectTimeout = TimeSpan.FromSeconds(20) })
        {
            Timeout = Timeout.InfiniteTimeSpan,   // big files; the per-read timeout below guards against stalls
        };
        _http.DefaultRequestHeaders.UserAgent.ParseAdd("PetalsSharp/1.0");
    }

    public Uri ResolveUri(HubModelId id, string file) =>
        new($"{_settings.Endpoint}/{id.Repo}/resolve/{Uri.EscapeDataString(id.Revision).Replace("%2F", "/")}/{file}");

    /// <summary>HEADs a file; null when the hub says it does not exist (404 with an entry-not-found, or any 404).</summary>
    /// <exception cref="HubException">Unknown repo or revision, access denied, or a reply without the headers needed.</exception>
    public async Task<HubFileInfo?> HeadAsync(HubModelId id, string file, CancellationToken ct)
    {
        var uri = ResolveUri(id, file);
        for (int hop = 0; hop < 5; hop++)
        {
            using var request = NewRequest(HttpMethod.Head, uri);
            request.Headers.AcceptEncoding.Add(new StringWithQualityHeaderValue("identity"));
            using var response = await SendAsync(request, id, file, ct).ConfigureAwait(false);
            if (response.StatusCode == HttpStatusCode.NotFound)
            {
                // The hub tells a missing file (EntryNotFound) from a missing repo or revision; only the first is optional.
                string? code = Header(response, "X-Error-Code");
                if (code is "RepoNotFound") throw new HubException($"{id.Repo} was not found on {_settings.Endpoint} (a private or gated repo needs HF_TOKEN)");
                if (code is "RevisionNotFound") throw new HubException($"revision '{id.Revision}' of {id.Repo} was not found on {_settings.Endpoint}");
                return null;
            }
            if (IsRedirect(response.StatusCode) && response.Headers.Location is { } location)
            {
                // As huggingface_hub does: a relative redirect stays on the hub (a renamed repo, a resolve cache) and is
                // followed; an absolute one goes to the CDN that serves the content, and this reply carries its metadata.
                if (!location.IsAbsoluteUri)
                {
                    uri = new Uri(uri, location);
                    continue;
                }
                return Info(response, id, file, location);
            }
            EnsureSuccess(response, id, file);
            return Info(response, id, file, uri);
        }
        throw new HubException($"{id}: too many redirects for {file}");
    }

    HubFileInfo Info(HttpResponseMessage response, HubModelId id, string file, Uri download)
    {
        string? commit = Header(response, "X-Repo-Commit");
        string? etag = Header(response, "X-Linked-Etag") ?? response.Headers.ETag?.Tag ?? Header(response, "ETag");
        string? sizeText = Header(response, "X-Linked-Size");
        long? size = sizeText is not null && long.TryParse(sizeText, out var s) ? s : response.Content.Headers.ContentLength;
        if (commit is null || !HubModelId.IsCommitHash(commit))
            throw new HubException($"{id}: the hub's reply for {file} has no valid X-Repo-Commit header (is HF_ENDPOINT a Hugging Face hub?)");
        etag = etag?.Replace("W/", "", StringComparison.Ordinal).Trim('"');
        if (string.IsNullOrEmpty(etag) || etag.Any(c => !char.IsAsciiLetterOrDigit(c) && c is not '-' and not '_'))
            throw new HubException($"{id}: the hub's reply for {file} has no usable ETag");
        if (size is null or < 0) throw new HubException($"{id}: the hub's reply for {file} has no size");
        return new HubFileInfo(commit, etag, size.Value, download);
    }

    /// <summary>
    /// Downloads <paramref name="info"/> into <paramref name="partialPath"/>, resuming from what is already there with a
    /// Range request. Returns when the file has <see cref="HubFileInfo.Size"/> bytes (checking them is the caller's job).
    /// </summary>
    public async Task DownloadAsync(HubModelId id, string file, HubFileInfo info, string partialPath, IProgress<HubProgress>? progress,
        CancellationToken ct)
    {
        var uri = info.DownloadUri;
        for (int hop = 0; hop < 5; hop++)
        {
            long have = File.Exists(partialPath) ? new FileInfo(partialPath).Length : 0;
            if (have > info.Size) { File.Delete(partialPath); have = 0; }
            if (have == info.Size) return;
            using var request = NewRequest(HttpMethod.Get, uri, sendToken: uri.Host == new Uri(_settings.Endpoint).Host);
            if (have > 0) request.Headers.Range = new RangeHeaderValue(have, null);
            using var response = await SendAsync(request, id, file, ct, HttpCompletionOption.ResponseHeadersRead).ConfigureAwait(false);
            if (IsRedirect(response.StatusCode) && response.Headers.Location is { } location)
            {
                uri = location.IsAbsoluteUri ? location : new Uri(uri, location);
                continue;
            }
            if (response.StatusCode == HttpStatusCode.RequestedRangeNotSatisfiable) { File.Delete(partialPath); continue; }
            EnsureSuccess(response, id, file);
            bool resumed = response.StatusCode == HttpStatusCode.PartialContent;
            if (!resumed) have = 0;   // the server ignored Range: start over
            await using var output = new FileStream(partialPath, resumed ? FileMode.Append : FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16);
            await using var input = await response.Content.ReadAsStreamAsync(ct).ConfigureAwait(false);
            var buffer = new byte[1 << 16];
            long lastReport = 0;
            progress?.Report(new HubProgress(file, have, info.Size));
            while (true)
            {
                using var stall = CancellationTokenSource.CreateLinkedTokenSource(ct);
                stall.CancelAfter(TimeSpan.FromSeconds(60));
                int read;
                try
                {
                    read = await input.ReadAsync(buffer, stall.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!ct.IsCancellationRequested)
                {
                    throw new HttpRequestException($"no data for 60 s while downloading {file}");
                }
                if (read == 0) break;
                await output.WriteAsync(buffer.AsMemory(0, read), ct).ConfigureAwait(false);
                have += read;
                if (have - lastReport >= 1 << 20 || have == info.Size) { progress?.Report(new HubProgress(file, have, info.Size)); lastReport = have; }
            }
            if (have < info.Size) throw new HttpRequestException($"connection closed after {have} of {info.Size} bytes of {file}");
            return;
        }
        throw new HubException($"{id}: too many redirects downloading {file}");
    }

    HttpRequestMessage NewRequest(HttpMethod method, Uri uri, bool sendToken = true)
    {
        var request = new HttpRequestMessage(method, uri);
        if (sendToken && _settings.Token is { Length: > 0 } token) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        return request;
    }

    async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, HubModelId id, string file, CancellationToken ct,
        HttpCompletionOption completion = HttpCompletionOption.ResponseContentRead)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(60));
        try
        {
            return await _http.SendAsync(request, completion, timeout.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new HttpRequestException($"{_settings.Endpoint} did not answer within 60 s ({id}, {file})");
        }
    }

    void EnsureSuccess(HttpResponseMessage response, HubModelId id, string file)
    {
        if (response.IsSuccessStatusCode) return;
        throw response.StatusCode switch
        {
            HttpStatusCode.Unauthorized or HttpStatusCode.Forbidden => new HubException(
                $"{id}: access to {file} denied ({(int)response.StatusCode}); the repo may be gated or private: accept its terms on the hub and set HF_TOKEN"
                + (_settings.Token is null ? "" : " (a token was sent; it may lack access)")),
            _ => new HttpRequestException($"{id}: {file}: the hub answered {(int)response.StatusCode} {response.ReasonPhrase}", null, response.StatusCode),
        };
    }

    static bool IsRedirect(HttpStatusCode code) => (int)code is 301 or 302 or 303 or 307 or 308;

    static string? Header(HttpResponseMessage r, string name) =>
        r.Headers.TryGetValues(name, out var v) || r.Content.Headers.TryGetValues(name, out v) ? v.FirstOrDefault() : null;

    public void Dispose() => _http.Dispose();
}
