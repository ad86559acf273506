using System.Text;
using static PetalsSharp.Text.Templates.ChatTemplateValues;

namespace PetalsSharp.Text.Templates;

/// <summary>
/// Renders a parsed chat template. Scoping follows Jinja: a <c>{% set %}</c> inside a for loop does not leak out of
/// it (templates use <c>namespace()</c> for that), while one inside an if does.
/// </summary>
internal sealed class ChatTemplateRenderer
{
    readonly List<Dictionary<string, object?>> _scopes = [];
    readonly StringBuilder _out = new();

    sealed class LoopControl(bool isBreak) : Exception { public bool IsBreak { get; } = isBreak; }

    public static string Render(IReadOnlyList<Node> nodes, Dictionary<string, object?> globals)
    {
        var r = new ChatTemplateRenderer();
        r._scopes.Add(globals);
        try
        {
            r.Run(nodes);
        }
        catch (LoopControl)
        {
            throw new ChatTemplateException("'break' or 'continue' outside a for loop");
        }
        return r._out.ToString();
    }

    void Run(IReadOnlyList<Node> nodes)
    {
        foreach (var node in nodes) Run(node);
    }

    void Run(Node node)
    {
        switch (node)
        {
            case TextNode t: _out.Append(t.Text); break;
            case OutputNode o: _out.Append(Str(Eval(o.Value))); break;
            case IfNode i:
                foreach (var (condition, body) in i.Branches)
                    if (Truthy(Eval(condition))) { Run(body); return; }
                if (i.Else is not null) Run(i.Else);
                break;
            case SetNode s:
                var value = Eval(s.Value);
                if (s.Attribute is null) _scopes[^1][s.Name] = value;
                else if (Lookup(s.Name) is Namespace ns) ns[s.Attribute] = value;
                else throw new ChatTemplateException($"line {s.Line}: cannot set '{s.Name}.{s.Attribute}': '{s.Name}' is not a namespace()");
                break;
            case ForNode f: RunFor(f); break;
            case LoopControlNode c: throw new LoopControl(c.IsBreak);
        }
    }

    void RunFor(ForNode f)
    {
        var all = ChatTemplateBuiltins.Iterate(Eval(f.Iterable)).ToList();
        var scope = new Dictionary<string, object?>(StringComparer.Ordinal);
        _scopes.Add(scope);
        try
        {
            if (f.Filter is not null)
                all = all.Where(item => { Bind(scope, f.Targets, item, f.Line); return Truthy(Eval(f.Filter)); }).ToList();
            for (int i = 0; i < all.Count; i++)
            {
                scope.Clear();
                Bind(scope, f.Targets, all[i], f.Line);
                scope["loop"] = new Dictionary<string, object?>(StringComparer.Ordinal)
                {
                    ["index"] = (long)i + 1, ["index0"] = (long)i, ["revindex"] = (long)(all.Count - i), ["revindex0"] = (long)(all.Count - i - 1),
                    ["first"] = i == 0, ["last"] = i == all.Count - 1, ["length"] = (long)all.Count,
                    ["previtem"] = i > 0 ? all[i - 1] : new Undefined("loop.previtem"),
                    ["nextitem"] = i + 1 < all.Count ? all[i + 1] : new Undefined("loop.nextitem"),
                };
                try
                {
                    Run(f.Body);
                }
                catch (LoopControl c)
                {
                    if (c.IsBreak) break;
                }
            }
        }
        finally
        {
            _scopes.RemoveAt(_scopes.Count - 1);
        }
        if (all.Count == 0 && f.Else is not null) Run(f.Else);
    }

    static void Bind(Dictionary<string, object?> scope, IReadOnlyList<string> targets, object? item, int line)
    {
        if (targets.Count == 1) { scope[targets[0]] = item; return; }
        if (item is not List<object?> parts || parts.Count != targets.Count)
            throw new ChatTemplateException($"line {line}: cannot unpack {TypeName(item)} into {targets.Count} loop variables");
        for (int i = 0; i < targets.Count; i++) scope[targets[i]] = parts[i];
    }

    object? Lookup(string name)
    {
        for (int i = _scopes.Count - 1; i >= 0; i--)
            if (_scopes[i].TryGetValue(name, out var v)) return v;
        return new Undefined(name);
    }

    object? Eval(Expr e)
    {
        try
        {
            return EvalCore(e);
        }
        catch (ChatTemplateException ex) when (!ex.HasLine && !ex.Raised)
        {
            throw new ChatTemplateException($"line {e.Line}: {ex.Message}") { HasLine = true };
        }
    }

    object? EvalCore(Expr e)
    {
        switch (e)
        {
            case LiteralExpr l: return l.Value;
            case NameExpr n: return Lookup(n.Name);
            case ListExpr l: return l.Items.Select(Eval).ToList();
            case DictExpr d:
                var dict = new Dictionary<string, object?>(StringComparer.Ordinal);
                foreach (var (k, v) in d.Items) dict[Eval(k) as string ?? throw new ChatTemplateException("dict keys must be strings")] = Eval(v);
                return dict;
            case AttrExpr a: return GetItem(Eval(a.Target), a.Name, attribute: true);
            case IndexExpr i: return Index(Eval(i.Target), Eval(i.Index));
            case SliceExpr s: return Slice(Eval(s.Target), s.Start is null ? null : Eval(s.Start), s.Stop is null ? null : Eval(s.Stop), s.Step is null ? null : Eval(s.Step));
            case FilterExpr f:
                return ChatTemplateBuiltins.Filter(f.Name, Eval(f.Target), f.Args.Select(Eval).ToList(),
                    f.Kwargs.ToDictionary(k => k.Name, k => Eval(k.Value)));
            case TestExpr t:
                return ChatTemplateBuiltins.Test(t.Name, Eval(t.Target), t.Args.Select(Eval).ToList()) != t.Negated;
            case UnaryExpr u:
                var operand = Eval(u.Operand);
                return u.Op switch
                {
                    "not" => !Truthy(operand),
                    "-" => operand is long l ? (object)(-l) : -ToDouble(operand),
                    _ => operand is long or double ? operand : ToDouble(operand),
                };
            case BinaryExpr b: return Binary(b);
            case CondExpr c: return Truthy(Eval(c.Condition)) ? Eval(c.Then) : c.Else is null ? new Undefined("else") : Eval(c.Else);
            case CallExpr c: return Call(c);
        }
        throw new ChatTemplateException($"unsupported expression {e.GetType().Name}");
    }

    object? Binary(BinaryExpr b)
    {
        if (b.Op == "and") { var l = Eval(b.Left); return Truthy(l) ? Eval(b.Right) : l; }
        if (b.Op == "or") { var l = Eval(b.Left); return Truthy(l) ? l : Eval(b.Right); }
        object? x = Eval(b.Left), y = Eval(b.Right);
        foreach (var v in new[] { x, y })
            if (v is Undefined u && b.Op is not ("==" or "!=" or "~" or "in" or "not in"))
                throw new ChatTemplateException($"'{u.Name}' is undefined (operator '{b.Op}')");
        switch (b.Op)
        {
            case "==": return ChatTemplateValues.Equals(x, y);
            case "!=": return !ChatTemplateValues.Equals(x, y);
            case "<": return Compare(x, y) < 0;
            case ">": return Compare(x, y) > 0;
            case "<=": return Compare(x, y) <= 0;
            case ">=": return Compare(x, y) >= 0;
            case "in": return Contains(y, x);
            case "not in": return !Contains(y, x);
            case "~": return Str(x) + Str(y);
            case "+":
                if (x is string sx && y is string sy) return sx + sy;
                if (x is List<object?> lx && y is List<object?> ly) return lx.Concat(ly).ToList();
                break;
            case "*" when x is string rep && y is long times: return string.Concat(Enumerable.Repeat(rep, (int)Math.Max(0, times)));
            case "%" when x is string: throw new ChatTemplateException("unsupported string formatting with '%'; use '~' or '+'");
        }
        if (!IsNumber(x) || !IsNumber(y))
            throw new ChatTemplateException($"unsupported operand types for {b.Op}: {TypeName(x)} and {TypeName(y)}");
        if (x is double || y is double || b.Op == "/")
        {
            double dx = ToDouble(x), dy = ToDouble(y);
            if (dy == 0 && b.Op is "/" or "//" or "%") throw new ChatTemplateException("division by zero");
            return b.Op switch
            {
                "+" => dx + dy,
                "-" => dx - dy,
                "*" => dx * dy,
                "/" => dx / dy,
                "//" => Math.Floor(dx / dy),
                "%" => dx - dy * Math.Floor(dx / dy),
                _ => throw new ChatTemplateException($"unsupported operator '{b.Op}'"),
            };
        }
        long ix = (long)ToDouble(x), iy = (long)ToDouble(y);
        if (iy == 0 && b.Op is "//" or "%") throw new ChatTemplateException("division by zero");
        return b.Op switch
        {
            "+" => ix + iy,
            "-" => ix - iy,
            "*" => ix * iy,
            "//" => (long)Math.Floor((double)ix / iy),
            "%" => ((ix % iy) + iy) % iy,
            _ => throw new ChatTemplateException($"unsupported operator '{b.Op}'"),
        };
    }

    object? Call(CallExpr c)
    {
        var args = c.Args.Select(Eval).ToList();
        if (c.Callee is AttrExpr method)
        {
            if (c.Kwargs.Count > 0) throw new ChatTemplateException($"keyword arguments to '{method.Name}()' are not supported");
            var target = Eval(method.Target);
            if (target is Undefined u) throw new ChatTemplateException($"'{u.Name}' is undefined (calling '.{method.Name}()')");
            return ChatTemplateBuiltins.Method(target, method.Name, args);
        }
        string name = c.Callee is NameExpr n ? n.Name : throw new ChatTemplateException("only named functions and methods can be called");
        switch (name)
        {
            case "raise_exception":
                throw new ChatTemplateException(args.Count > 0 ? Str(args[0]) : "raise_exception() called") { Raised = true };
            case "namespace":
                var ns = new Namespace();
                foreach (var (k, v) in c.Kwargs) ns[k] = Eval(v);
                return ns;
            case "range":
                var r = args.Select(a => a is long l ? l : throw new ChatTemplateException("range() needs integers")).ToArray();
                var (start, stop, step) = r.Length switch { 1 => (0L, r[0], 1L), 2 => (r[0], r[1], 1L), 3 => (r[0], r[1], r[2]), _ => throw new ChatTemplateException("range() takes 1 to 3 arguments") };
                if (step == 0) throw new ChatTemplateException("range() step must not be zero");
                var list = new List<object?>();
                for (long i = start; step > 0 ? i < stop : i > stop; i += step) list.Add(i);
                return list;
        }
        throw new ChatTemplateException($"unsupported function '{name}()' (supported: raise_exception, namespace, range)");
    }

    public static bool Contains(object? container, object? item) => container switch
    {
        string s => item is string sub ? s.Contains(sub, StringComparison.Ordinal) : throw new ChatTemplateException($"'in <string>' needs a string, got {TypeName(item)}"),
        List<object?> l => l.Any(x => ChatTemplateValues.Equals(x, item)),
        IDictionary<string, object?> d => item is string key && d.ContainsKey(key),
        Undefined u => throw new ChatTemplateException($"'{u.Name}' is undefined (operator 'in')"),
        _ => throw new ChatTemplateException($"argument of type {TypeName(container)} is not iterable"),
    };

    /// <summary><c>x.name</c> and <c>x['name']</c>: a dict key, or undefined when missing.</summary>
    public static object? GetItem(object? target, string name, bool attribute = false) => target switch
    {
        IDictionary<string, object?> d => d.TryGetValue(name, out var v) ? v : new Undefined(name),
        Undefined u => throw new ChatTemplateException($"'{u.Name}' is undefined (reading '{name}')"),
        null => throw new ChatTemplateException($"None has no attribute '{name}'"),
        _ when attribute => new Undefined(name),
        _ => throw new ChatTemplateException($"{TypeName(target)} has no item '{name}'"),
    };

    static object? Index(object? target, object? index)
    {
        if (index is string key) return GetItem(target, key);
        if (index is not long i) throw new ChatTemplateException($"index must be an integer or a string, got {TypeName(index)}");
        switch (target)
        {
            case List<object?> l:
                long li = i < 0 ? l.Count + i : i;
                return li >= 0 && li < l.Count ? l[(int)li] : new Undefined($"[{i}]");
            case string s:
                long si = i < 0 ? s.Length + i : i;
                return si >= 0 && si < s.Length ? s[(int)si].ToString() : new Undefined($"[{i}]");
            case Undefined u: throw new ChatTemplateException($"'{u.Name}' is undefined (reading [{i}])");
        }
        throw new ChatTemplateException($"{TypeName(target)} cannot be indexed with an integer");
    }

    static object? Slice(object? target, object? start, object? stop, object? step)
    {
        long? Opt(object? v) => v switch { null => null, long l => l, _ => throw new ChatTemplateException($"slice bounds must be integers, got {TypeName(v)}") };
        int length = target switch
        {
            List<object?> l => l.Count,
            string s => s.Length,
            Undefined u => throw new ChatTemplateException($"'{u.Name}' is undefined (slicing)"),
            _ => throw new ChatTemplateException($"{TypeName(target)} cannot be sliced"),
        };
        long st = Opt(step) ?? 1;
        if (st == 0) throw new ChatTemplateException("slice step cannot be zero");
        // Python's slice.indices(): clamp, with negative indices counted from the end.
        long Clamp(long? v, long dflt)
        {
            if (v is null) return dflt;
            long x = v.Value < 0 ? v.Value + length : v.Value;
            return st > 0 ? Math.Clamp(x, 0, length) : Math.Clamp(x, -1, length - 1);
        }
        long from = Clamp(Opt(start), st > 0 ? 0 : length - 1), to = Clamp(Opt(stop), st > 0 ? length : -1);
        var picked = new List<int>();
        for (long i = from; st > 0 ? i < to : i > to; i += st) picked.Add((int)i);
        return target is string str ? string.Concat(picked.Select(i => str[i])) : picked.Select(i => ((List<object?>)target!)[i]).ToList();
    }
}
