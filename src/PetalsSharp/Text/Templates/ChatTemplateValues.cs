using System.Globalization;
using System.Text;

namespace PetalsSharp.Text.Templates;

/// <summary>A name that was never set (Jinja's <c>Undefined</c>): renders as "", is falsy, fails when used further.</summary>
internal sealed class Undefined
{
    public Undefined(string name) => Name = name;
    public string Name { get; }
}

/// <summary>The mutable object <c>namespace()</c> returns, so a loop body can change a value outside the loop.</summary>
internal sealed class Namespace : Dictionary<string, object?>
{
    public Namespace() : base(StringComparer.Ordinal) { }
}

/// <summary>
/// Python semantics for the values a template sees: null is <c>None</c>, numbers are long or double,
/// lists are <see cref="List{T}"/> of object, dicts are ordered string-keyed dictionaries.
/// </summary>
internal static class ChatTemplateValues
{
    public static bool Truthy(object? v) => v switch
    {
        null or Undefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        System.Collections.ICollection c => c.Count > 0,
        _ => true,
    };

    /// <summary>What <c>{{ v }}</c> prints: Python's <c>str(v)</c>.</summary>
    public static string Str(object? v) => v switch
    {
        Undefined => "",
        string s => s,
        _ => Repr(v),
    };

    public static string Repr(object? v) => v switch
    {
        null => "None",
        Undefined => "",
        bool b => b ? "True" : "False",
        long l => l.ToString(CultureInfo.InvariantCulture),
        double d => FormatDouble(d),
        string s => "'" + s.Replace("\\", "\\\\").Replace("'", "\\'").Replace("\n", "\\n") + "'",
        List<object?> list => "[" + string.Join(", ", list.Select(Repr)) + "]",
        IDictionary<string, object?> dict => "{" + string.Join(", ", dict.Select(kv => Repr(kv.Key) + ": " + Repr(kv.Value))) + "}",
        _ => v.ToString() ?? "",
    };

    static string FormatDouble(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsInfinity(d)) return d > 0 ? "inf" : "-inf";
        string r = d.ToString("R", CultureInfo.InvariantCulture);
        return r.Contains('.') || r.Contains('E') ? r : r + ".0";
    }

    public static string TypeName(object? v) => v switch
    {
        null => "NoneType",
        Undefined u => $"undefined ('{u.Name}')",
        bool => "bool",
        long => "int",
        double => "float",
        string => "str",
        Namespace => "namespace",
        List<object?> => "list",
        IDictionary<string, object?> => "dict",
        _ => v.GetType().Name,
    };

    public static bool IsNumber(object? v) => v is long or double or bool;

    public static double ToDouble(object? v) => v switch
    {
        long l => l,
        double d => d,
        bool b => b ? 1 : 0,
        _ => throw new ChatTemplateException($"expected a number, got {TypeName(v)}"),
    };

    public static new bool Equals(object? a, object? b)
    {
        if (a is Undefined || b is Undefined) return a is Undefined && b is Undefined;
        if (a is null || b is null) return a is null && b is null;
        if (IsNumber(a) && IsNumber(b)) return ToDouble(a) == ToDouble(b);
        if (a is string sa && b is string sb) return sa == sb;
        if (a is List<object?> la && b is List<object?> lb) return la.Count == lb.Count && la.Zip(lb).All(p => Equals(p.First, p.Second));
        if (a is IDictionary<string, object?> da && b is IDictionary<string, object?> db)
            return da.Count == db.Count && da.All(kv => db.TryGetValue(kv.Key, out var o) && Equals(kv.Value, o));
        return ReferenceEquals(a, b);
    }

    public static int Compare(object? a, object? b)
    {
        if (IsNumber(a) && IsNumber(b)) return ToDouble(a).CompareTo(ToDouble(b));
        if (a is string sa && b is string sb) return string.CompareOrdinal(sa, sb);
        throw new ChatTemplateException($"cannot compare {TypeName(a)} with {TypeName(b)}");
    }

    /// <summary>Python's <c>json.dumps(v, ensure_ascii=False, indent=indent)</c>, as transformers' <c>tojson</c> does.</summary>
    public static string ToJson(object? v, int? indent)
    {
        var sb = new StringBuilder();
        WriteJson(sb, v, indent, 0);
        return sb.ToString();
    }

    static void WriteJson(StringBuilder sb, object? v, int? indent, int depth)
    {
        switch (v)
        {
            case null or Undefined: sb.Append("null"); break;
            case bool b: sb.Append(b ? "true" : "false"); break;
            case long l: sb.Append(l.ToString(CultureInfo.InvariantCulture)); break;
            case double d: sb.Append(double.IsFinite(d) ? FormatDouble(d) : d > 0 ? "Infinity" : d < 0 ? "-Infinity" : "NaN"); break;
            case string s: JsonString(sb, s); break;
            case List<object?> list:
                WriteItems(sb, '[', ']', list, indent, depth, (item, d) => WriteJson(sb, item, indent, d));
                break;
            case IDictionary<string, object?> dict:
                WriteItems(sb, '{', '}', dict.ToList(), indent, depth, (kv, d) =>
                {
                    JsonString(sb, kv.Key);
                    sb.Append(": ");
                    WriteJson(sb, kv.Value, indent, d);
                });
                break;
            default: throw new ChatTemplateException($"tojson: {TypeName(v)} is not JSON serializable");
        }
    }

    static void WriteItems<T>(StringBuilder sb, char open, char close, IReadOnlyList<T> items, int? indent, int depth, Action<T, int> write)
    {
        sb.Append(open);
        if (items.Count == 0) { sb.Append(close); return; }
        for (int i = 0; i < items.Count; i++)
        {
            if (i > 0) sb.Append(indent is null ? ", " : ",");
            if (indent is not null) sb.Append('\n').Append(' ', indent.Value * (depth + 1));
            write(items[i], depth + 1);
        }
        if (indent is not null) sb.Append('\n').Append(' ', indent.Value * depth);
        sb.Append(close);
    }

    static void JsonString(StringBuilder sb, string s)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }

    /// <summary>Converts a value from <see cref="System.Text.Json"/> into template values.</summary>
    public static object? FromJson(System.Text.Json.JsonElement e) => e.ValueKind switch
    {
        System.Text.Json.JsonValueKind.String => e.GetString(),
        System.Text.Json.JsonValueKind.Number => e.TryGetInt64(out var l) ? l : e.GetDouble(),
        System.Text.Json.JsonValueKind.True => true,
        System.Text.Json.JsonValueKind.False => false,
        System.Text.Json.JsonValueKind.Array => e.EnumerateArray().Select(FromJson).ToList(),
        System.Text.Json.JsonValueKind.Object => e.EnumerateObject().Aggregate(new Dictionary<string, object?>(StringComparer.Ordinal),
            (d, p) => { d[p.Name] = FromJson(p.Value); return d; }),
        _ => null,
    };
}
