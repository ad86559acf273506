using System.Globalization;
using static PetalsSharp.Text.Templates.ChatTemplateValues;

namespace PetalsSharp.Text.Templates;

/// <summary>The filters, tests and methods chat templates use, with Jinja/Python behaviour.</summary>
internal static class ChatTemplateBuiltins
{
    static readonly HashSet<string> Filters =
    [
        "trim", "length", "count", "upper", "lower", "capitalize", "title", "tojson", "join", "first", "last", "default", "d",
        "string", "int", "float", "list", "reverse", "replace", "items", "safe", "select", "reject", "selectattr", "rejectattr",
        "map", "unique", "abs", "round", "indent", "wordcount", "dictsort",
    ];

    static readonly HashSet<string> Tests =
    [
        "defined", "undefined", "none", "string", "number", "integer", "float", "boolean", "true", "false", "mapping",
        "iterable", "sequence", "equalto", "eq", "==", "ne", "!=", "odd", "even", "divisibleby", "in", "lower", "upper",
        "gt", ">", "ge", ">=", "lt", "<", "le", "<=",
    ];

    public static bool IsFilter(string name) => Filters.Contains(name);
    public static bool IsTest(string name) => Tests.Contains(name);

    public static bool Test(string name, object? v, IReadOnlyList<object?> args)
    {
        object? Arg() => args.Count > 0 ? args[0] : throw new ChatTemplateException($"test '{name}' needs an argument");
        return name switch
        {
            "defined" => v is not Undefined,
            "undefined" => v is Undefined,
            "none" => v is null,
            "string" => v is string,
            "number" => v is long or double,
            "integer" => v is long,
            "float" => v is double,
            "boolean" => v is bool,
            "true" => v is true,
            "false" => v is false,
            "mapping" => v is IDictionary<string, object?>,
            "iterable" => v is string or List<object?> or IDictionary<string, object?>,
            "sequence" => v is string or List<object?> or IDictionary<string, object?>,
            "equalto" or "eq" or "==" => ChatTemplateValues.Equals(v, Arg()),
            "ne" or "!=" => !ChatTemplateValues.Equals(v, Arg()),
            "gt" or ">" => Compare(v, Arg()) > 0,
            "ge" or ">=" => Compare(v, Arg()) >= 0,
            "lt" or "<" => Compare(v, Arg()) < 0,
            "le" or "<=" => Compare(v, Arg()) <= 0,
            "odd" => Int(v) % 2 != 0,
            "even" => Int(v) % 2 == 0,
            "divisibleby" => Int(v) % Int(Arg()) == 0,
            "in" => ChatTemplateRenderer.Contains(Arg(), v),
            "lower" => v is string s && s == s.ToLowerInvariant(),
            "upper" => v is string s && s == s.ToUpperInvariant(),
            _ => throw new ChatTemplateException($"unsupported test 'is {name}'"),
        };
    }

    public static object? Filter(string name, object? v, IReadOnlyList<object?> args, IReadOnlyDictionary<string, object?> kwargs)
    {
        object? Arg(int i, string key, object? fallback = null) =>
            i < args.Count ? args[i] : kwargs.TryGetValue(key, out var k) ? k : fallback;
        if (v is Undefined u && name is not ("default" or "d" or "tojson" or "string" or "length" or "count" or "list"))
            throw new ChatTemplateException($"'{u.Name}' is undefined (filter '{name}')");
        switch (name)
        {
            case "trim": return Str(v).Trim(PythonWhitespace);
            case "upper": return Str(v).ToUpperInvariant();
            case "lower": return Str(v).ToLowerInvariant();
            case "capitalize": { var s = Str(v); return s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant(); }
            case "title": return CultureInfo.InvariantCulture.TextInfo.ToTitleCase(Str(v).ToLowerInvariant());
            case "length" or "count" or "wordcount":
                if (name == "wordcount") return (long)Str(v).Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Length;
                return v switch
                {
                    Undefined => 0L,
                    string s => (long)s.Length,
                    System.Collections.ICollection c => (long)c.Count,
                    _ => throw new ChatTemplateException($"object of type {TypeName(v)} has no length"),
                };
            case "tojson": return ToJson(v, Arg(0, "indent") is long n ? (int)n : null);
            case "join":
                return string.Join(Str(Arg(0, "d", "")), Iterate(v).Select(x => Arg(1, "attribute") is string a ? Str(ChatTemplateRenderer.GetItem(x, a)) : Str(x)));
            case "first": return Iterate(v).FirstOrDefault(new Undefined("first"));
            case "last": return v is List<object?> l ? (l.Count > 0 ? l[^1] : new Undefined("last")) : Iterate(v).LastOrDefault(new Undefined("last"));
            case "default" or "d":
                return v is Undefined || (Truthy(Arg(1, "boolean", false)) && !Truthy(v)) ? Arg(0, "default_value", "") : v;
            case "string": return Str(v);
            case "safe": return v;
            case "int":
                return v switch
                {
                    long li => li,
                    double d => (long)Math.Truncate(d),
                    bool b => b ? 1L : 0L,
                    string s when long.TryParse(s.Trim(), CultureInfo.InvariantCulture, out var p) => p,
                    _ => Arg(0, "default", 0L)
                };
            case "float":
                return v switch
                {
                    long lf => (double)lf,
                    double d => d,
                    string s when double.TryParse(s.Trim(), CultureInfo.InvariantCulture, out var p) => p,
                    _ => Arg(0, "default", 0.0)
                };
            case "abs": return v is long l2 ? Math.Abs(l2) : (object)Math.Abs(ToDouble(v));
            case "round": return Math.Round(ToDouble(v), (int)Int(Arg(0, "precision", 0L)), MidpointRounding.ToEven);
            case "list": return v is Undefined ? new List<object?>() : Iterate(v).ToList();
            case "reverse": return v is string rs ? new string(rs.Reverse().ToArray()) : Iterate(v).Reverse().ToList();
            case "unique": return Iterate(v).Aggregate(new List<object?>(), (acc, x) => { if (!acc.Any(y => ChatTemplateValues.Equals(x, y))) acc.Add(x); return acc; });
            case "replace": return Str(v).Replace(Str(Arg(0, "old")), Str(Arg(1, "new")));
            case "indent":
            {
                string pad = new(' ', (int)Int(Arg(0, "width", 4L)));
                var lines = Str(v).Split('\n');
                return string.Join("\n", lines.Select((line, i) => i == 0 && !Truthy(Arg(1, "first", false)) || line.Length == 0 ? line : pad + line));
            }
            case "items" or "dictsort":
                if (v is not IDictionary<string, object?> dict) throw new ChatTemplateException($"filter '{name}' needs a dict, got {TypeName(v)}");
                var pairs = dict.Select(kv => (object?)new List<object?> { kv.Key, kv.Value });
                return (name == "dictsort" ? pairs.OrderBy(p => (string)((List<object?>)p!)[0]!, StringComparer.Ordinal) : pairs).ToList();
            case "select" or "reject":
            {
                bool keep = name == "select";
                string? test = args.Count > 0 ? Str(args[0]) : null;
                var rest = args.Skip(1).ToList();
                return Iterate(v).Where(x => (test is null ? Truthy(x) : Test(test, x, rest)) == keep).ToList();
            }
            case "selectattr" or "rejectattr":
            {
                bool keep = name == "selectattr";
                string attr = Str(Arg(0, "attribute"));
                string? test = args.Count > 1 ? Str(args[1]) : null;
                var rest = args.Skip(2).ToList();
                return Iterate(v).Where(x =>
                {
                    var a = ChatTemplateRenderer.GetItem(x, attr);
                    return (test is null ? Truthy(a) : Test(test, a, rest)) == keep;
                }).ToList();
            }
            case "map":
                if (Arg(0, "attribute") is string attribute && kwargs.ContainsKey("attribute"))
                    return Iterate(v).Select(x => ChatTemplateRenderer.GetItem(x, attribute)).ToList();
                return Iterate(v).Select(x => Filter(Str(Arg(0, "filter")), x, args.Skip(1).ToList(), new Dictionary<string, object?>())).ToList();
        }
        throw new ChatTemplateException($"unsupported filter '{name}'");
    }

    /// <summary>The string and dict methods templates call (<c>content.strip()</c>, <c>dict.items()</c>...).</summary>
    public static object? Method(object? target, string name, IReadOnlyList<object?> args)
    {
        object? Arg(int i, object? fallback = null) => i < args.Count ? args[i] : fallback;
        char[]? Chars() => Arg(0) is string c ? c.ToCharArray() : null;
        if (target is string s)
        {
            return name switch
            {
                "strip" => s.Trim(Chars() ?? PythonWhitespace),
                "lstrip" => s.TrimStart(Chars() ?? PythonWhitespace),
                "rstrip" => s.TrimEnd(Chars() ?? PythonWhitespace),
                "upper" => s.ToUpperInvariant(),
                "lower" => s.ToLowerInvariant(),
                "title" => CultureInfo.InvariantCulture.TextInfo.ToTitleCase(s.ToLowerInvariant()),
                "capitalize" => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant(),
                "startswith" => s.StartsWith(Str(Arg(0)), StringComparison.Ordinal),
                "endswith" => s.EndsWith(Str(Arg(0)), StringComparison.Ordinal),
                "replace" => s.Replace(Str(Arg(0)), Str(Arg(1))),
                "split" => (Arg(0) is string sep ? s.Split(sep) : s.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries))
                    .Select(x => (object?)x).ToList(),
                "find" => (long)s.IndexOf(Str(Arg(0)), StringComparison.Ordinal),
                "count" => (long)(s.Split(Str(Arg(0))).Length - 1),
                _ => throw new ChatTemplateException($"unsupported string method '{name}()'"),
            };
        }
        if (target is IDictionary<string, object?> d)
        {
            return name switch
            {
                "items" => d.Select(kv => (object?)new List<object?> { kv.Key, kv.Value }).ToList(),
                "keys" => d.Keys.Select(k => (object?)k).ToList(),
                "values" => d.Values.ToList(),
                "get" => d.TryGetValue(Str(Arg(0)), out var value) ? value : Arg(1),
                _ => throw new ChatTemplateException($"unsupported dict method '{name}()'"),
            };
        }
        throw new ChatTemplateException($"{TypeName(target)} has no method '{name}()'");
    }

    public static IEnumerable<object?> Iterate(object? v) => v switch
    {
        List<object?> l => l,
        string s => s.Select(c => (object?)c.ToString()),
        IDictionary<string, object?> d => d.Keys,
        Undefined u => throw new ChatTemplateException($"'{u.Name}' is undefined"),
        _ => throw new ChatTemplateException($"{TypeName(v)} is not iterable"),
    };

    static long Int(object? v) => v is long l ? l : v is bool b ? (b ? 1 : 0) : throw new ChatTemplateException($"expected an integer, got {TypeName(v)}");

    // Python's str.strip() with no argument strips all Unicode whitespace.
    static readonly char[] PythonWhitespace = [' ', '\t', '\n', '\r', '\v', '\f', '\u0085', '\u00a0', '\u1680', '\u2000', '\u2001',
        '\u2002', '\u2003', '\u2004', '\u2005', '\u2006', '\u2007', '\u2008', '\u2009', '\u200a', '\u2028', '\u2029', '\u202f',
        '\u205f', '\u3000', '\u001c', '\u001d', '\u001e', '\u001f'];
}
