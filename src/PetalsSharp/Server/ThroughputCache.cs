using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace PetalsSharp.Server;

/// <summary>
/// Measured throughput per machine, model, dtype and device, kept in <c>throughput.json</c> so a restart (or a
/// second server on the same machine) does not measure again (Petals' throughput_v5.json). Several servers may
/// start together: every read-modify-write holds a lock file, and the file is replaced atomically.
/// </summary>
public sealed class ThroughputCache(string path)
{
    static readonly TimeSpan LockTimeout = TimeSpan.FromSeconds(30);

    /// <summary>The cache file.</summary>
    public string Path { get; } = path;

    /// <summary><c>$PETALS_CACHE/throughput.json</c>, or <c>~/.cache/petals-sharp/throughput.json</c>.</summary>
    public static string DefaultPath => System.IO.Path.Combine(Runtime.CacheDirectory, "throughput.json");

    /// <summary>Model name + hash of its config.json, weight dtype and device: what the rates depend on.</summary>
    public static string Key(string modelName, string modelDir, string dtype)
    {
        var config = File.ReadAllBytes(System.IO.Path.Combine(modelDir, "config.json"));
        var hash = Convert.ToHexStringLower(SHA256.HashData(config))[..16];
        var device = $"cpu-{RuntimeInformation.ProcessArchitecture}-{Environment.ProcessorCount}".ToLowerInvariant();
        return $"{modelName}@{hash}|{dtype}|{device}";
    }

    /// <summary>
    /// The cached per-block rates for <paramref name="key"/>, re-based on <paramref name="blocks"/>, or freshly
    /// measured (and stored) when missing or when <paramref name="remeasure"/> is set.
    /// </summary>
    public (ThroughputInfo Info, bool Hit) GetOrMeasure(string key, int blocks, bool remeasure, Func<ThroughputInfo> measure)
    {
        if (!remeasure && TryGet(key) is { } cached) return (cached.WithSpanLength(blocks), true);
        var measured = measure();
        Put(key, measured);
        return (measured.WithSpanLength(blocks), false);
    }

    /// <summary>The cached entry, or null (also for an unreadable file: a cache never stops a server).</summary>
    public ThroughputInfo? TryGet(string key)
    {
        using var held = Lock();
        var entry = Read()[key];
        if (entry is null) return null;
        try
        {
            double inference = (double)entry["inference_rps"]!, forward = (double)entry["forward_rps"]!, network = (double)entry["network_rps"]!;
            return inference > 0 && forward > 0 && network > 0 ? ThroughputInfo.ForSpan(inference, forward, network, 1) : null;
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException)
        {
            return null;
        }
    }

    /// <summary>Stores (or replaces) an entry.</summary>
    public void Put(string key, ThroughputInfo info)
    {
        using var held = Lock();
        var root = Read();
        root[key] = new JsonObject
        {
            ["inference_rps"] = info.InferenceRps, ["forward_rps"] = info.ForwardRps, ["network_rps"] = info.NetworkRps,
            ["measured_at"] = DateTimeOffset.UtcNow.ToString("O"),
        };
        var tmp = $"{Path}.{Environment.ProcessId}.tmp";
        File.WriteAllText(tmp, root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        File.Move(tmp, Path, overwrite: true);   // readers see the old file or the new one, never half of one
    }

    JsonObject Read()
    {
        try
        {
            return File.Exists(Path) && JsonNode.Parse(File.ReadAllText(Path)) is JsonObject o ? o : [];
        }
        catch (JsonException)
        {
            return [];
        }
    }

    FileStream Lock()
    {
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(Path))!);
        var deadline = DateTime.UtcNow + LockTimeout;
        while (true)
        {
            try
            {
                return new FileStream(Path + ".lock", FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException) when (DateTime.UtcNow < deadline)
            {
                Thread.Sleep(50);
            }
        }
    }
}
