namespace PetalsSharp.Benchmarks;

/// <summary>Flat <c>--key value</c> arguments.</summary>
public sealed class BenchArgs
{
    readonly Dictionary<string, string> _values = new();

    public static BenchArgs Parse(string[] args)
    {
        var result = new BenchArgs();
        for (int i = 0; i < args.Length; i++)
        {
            if (!args[i].StartsWith("--")) throw new ArgumentException($"unexpected argument '{args[i]}'");
            var key = args[i][2..];
            result._values[key] = i + 1 < args.Length && !args[i + 1].StartsWith("--") ? args[++i] : "true";
        }
        return result;
    }

    public string? Get(string key) => _values.GetValueOrDefault(key);
    public int Int(string key, int fallback) => _values.TryGetValue(key, out var v) ? int.Parse(v) : fallback;
}
