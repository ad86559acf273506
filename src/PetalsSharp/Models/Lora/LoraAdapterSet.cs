namespace PetalsSharp.Models.Lora;

/// <summary>Rules for adapter names, which travel on the wire and in DHT announcements.</summary>
public static class LoraNames
{
    public const int MaxLength = 64;

    /// <summary>Throws unless <paramref name="name"/> is 1–64 characters of letters, digits, '-', '_', '.', '/'.</summary>
    public static void Check(string name)
    {
        if (name.Length is 0 or > MaxLength || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' or '/'))
            throw new LoraException($"adapter name '{name}' must be 1–{MaxLength} characters of letters, digits, '-', '_', '.', '/'");
    }
}

/// <summary>The adapters a server holds, by name. Requests pick one with <c>active_adapter</c>; empty = base weights.</summary>
public sealed class LoraAdapterSet : IDisposable
{
    readonly Dictionary<string, LoraAdapter> _byName;

    LoraAdapterSet(Dictionary<string, LoraAdapter> byName) => _byName = byName;

    public static LoraAdapterSet Empty => new(new Dictionary<string, LoraAdapter>());

    /// <summary>Adapter names, sorted.</summary>
    public IReadOnlyList<string> Names => _byName.Keys.Order(StringComparer.Ordinal).ToList();

    public LoraAdapter? Find(string name) => _byName.GetValueOrDefault(name);

    /// <summary>Splits a spec <c>DIR</c> or <c>NAME=DIR</c>; the name defaults to the folder's name.</summary>
    public static (string Name, string Dir) ParseSpec(string spec)
    {
        var at = spec.IndexOf('=');
        var (name, dir) = at > 0 ? (spec[..at], spec[(at + 1)..]) : (Path.GetFileName(Path.TrimEndingDirectorySeparator(spec)), spec);
        if (dir.Length == 0) throw new LoraException($"adapter '{spec}': give DIR or NAME=DIR");
        return (name, dir);
    }

    /// <summary>Loads every adapter (specs as in <see cref="ParseSpec"/>), checked against <paramref name="model"/>.</summary>
    /// <exception cref="LoraException">A duplicate name, or an adapter that does not load or fit.</exception>
    public static LoraAdapterSet Load(IEnumerable<string> specs, ModelConfig model)
    {
        var byName = new Dictionary<string, LoraAdapter>(StringComparer.Ordinal);
        try
        {
            foreach (var spec in specs)
            {
                var (name, dir) = ParseSpec(spec);
                if (byName.ContainsKey(name)) throw new LoraException($"adapter name '{name}' is given twice (use NAME=DIR to rename one)");
                byName[name] = LoraAdapter.Load(name, dir, model);
            }
        }
        catch
        {
            foreach (var a in byName.Values) a.Dispose();
            throw;
        }
        return new LoraAdapterSet(byName);
    }

    public void Dispose()
    {
        foreach (var a in _byName.Values) a.Dispose();
    }
}
