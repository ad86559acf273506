using Mono.Cecil;
using Mono.Cecil.Cil;

namespace PetalsSharp.Tests.Architecture;

/// <summary>
/// The floors of PetalsSharp: a namespace may use its own floor's allowed neighbours and anything below it,
/// never above. Read from compiled IL (every type, member signature, attribute and instruction operand), so
/// a fully qualified name or a <c>using static</c> cannot slip past it.
/// </summary>
public static class Layering
{
    /// <summary>
    /// What each area may use besides itself. Client and Server share a floor and never use each other:
    /// code both need (swarm reading, peer channels) lives below them.
    /// </summary>
    public static readonly IReadOnlyDictionary<string, string[]> Allowed = new Dictionary<string, string[]>
    {
        ["PetalsSharp"] = [],
        ["Wire"] = ["PetalsSharp"],
        ["Text"] = ["PetalsSharp"],
        ["Dht"] = ["PetalsSharp", "Wire"],
        ["Relay"] = ["PetalsSharp", "Wire", "Dht"],
        ["Models"] = ["PetalsSharp", "Wire", "Text", "Dht"],
        ["Swarm"] = ["PetalsSharp", "Wire", "Text", "Dht", "Models"],
        ["Generation"] = ["PetalsSharp", "Wire", "Text", "Dht", "Models"],
        ["Hub"] = ["PetalsSharp", "Wire", "Text", "Dht", "Models"],
        ["Client"] = ["PetalsSharp", "Wire", "Text", "Dht", "Models", "Swarm", "Generation", "Hub"],
        ["Server"] = ["PetalsSharp", "Wire", "Text", "Dht", "Relay", "Models", "Swarm", "Generation", "Hub"],
        ["Training"] = ["PetalsSharp", "Wire", "Text", "Dht", "Models", "Swarm", "Generation", "Hub", "Client"],
        ["Api"] = ["PetalsSharp", "Wire", "Text", "Dht", "Models", "Swarm", "Generation", "Hub", "Client", "Training"],
        ["Cli"] = ["PetalsSharp", "Wire", "Text", "Dht", "Relay", "Models", "Swarm", "Generation", "Hub", "Client", "Server",
            "Training", "Api"],
    };

    /// <summary>A use of one type by another: <c>From</c> refers to <c>To</c>.</summary>
    public sealed record Edge(string From, string To);

    /// <summary>The area of a namespace: its second segment (<c>PetalsSharp.Text.Tokenizers</c> → Text), or null outside ours.</summary>
    public static string? Area(string ns)
    {
        if (ns == "PetalsSharp") return "PetalsSharp";
        if (!ns.StartsWith("PetalsSharp.", StringComparison.Ordinal)) return null;
        var rest = ns["PetalsSharp.".Length..];
        int dot = rest.IndexOf('.');
        return dot < 0 ? rest : rest[..dot];
    }

    /// <summary>The edges that break the floors, as "From → To" lines (empty when the graph is clean).</summary>
    public static List<string> Violations(IEnumerable<Edge> edges)
    {
        var bad = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var e in edges)
        {
            string? from = Area(Namespace(e.From)), to = Area(Namespace(e.To));
            if (from is null || to is null || from == to) continue;
            if (!Allowed.TryGetValue(from, out var ok))
                bad.Add($"{e.From} is in an area with no floor ({from}): add it to Layering.Allowed");
            else if (!ok.Contains(to))
                bad.Add($"{from} → {to}: {e.From} uses {e.To}");
        }
        return [.. bad];
    }

    /// <summary>Every type-to-type use inside <paramref name="path"/> (an assembly file).</summary>
    public static IEnumerable<Edge> Edges(string path)
    {
        using var module = ModuleDefinition.ReadModule(path);
        var edges = new HashSet<Edge>();
        foreach (var type in module.GetTypes())
        {
            var owner = Outermost(type).FullName;
            void Use(TypeReference? t)
            {
                foreach (var name in Names(t)) edges.Add(new Edge(owner, name));
            }
            Use(type.BaseType);
            foreach (var i in type.Interfaces) Use(i.InterfaceType);
            foreach (var a in type.CustomAttributes) Use(a.AttributeType);
            foreach (var f in type.Fields) Use(f.FieldType);
            foreach (var p in type.Properties) Use(p.PropertyType);
            foreach (var ev in type.Events) Use(ev.EventType);
            foreach (var m in type.Methods)
            {
                Use(m.ReturnType);
                foreach (var p in m.Parameters) Use(p.ParameterType);
                foreach (var a in m.CustomAttributes) Use(a.AttributeType);
                if (!m.HasBody) continue;
                foreach (var v in m.Body.Variables) Use(v.VariableType);
                foreach (var ins in m.Body.Instructions) UseOperand(ins, Use);
            }
        }
        return edges;
    }

    static void UseOperand(Instruction ins, Action<TypeReference?> use)
    {
        switch (ins.Operand)
        {
            case TypeReference t: use(t); break;
            case MethodReference m:
                use(m.DeclaringType);
                use(m.ReturnType);
                foreach (var p in m.Parameters) use(p.ParameterType);
                if (m is GenericInstanceMethod g) foreach (var a in g.GenericArguments) use(a);
                break;
            case FieldReference f: use(f.DeclaringType); use(f.FieldType); break;
        }
    }

    // Generic instances, arrays, pointers and by-refs name every type they are built from.
    static IEnumerable<string> Names(TypeReference? t)
    {
        if (t is null || t.IsGenericParameter) yield break;
        if (t is TypeSpecification spec)
        {
            foreach (var n in Names(spec.ElementType)) yield return n;
            if (t is GenericInstanceType g)
                foreach (var a in g.GenericArguments)
                    foreach (var n in Names(a)) yield return n;
            yield break;
        }
        yield return Outermost(t).FullName;
    }

    static TypeReference Outermost(TypeReference t)
    {
        while (t.DeclaringType is not null) t = t.DeclaringType;
        return t;
    }

    static string Namespace(string fullName)
    {
        int dot = fullName.LastIndexOf('.');
        return dot < 0 ? "" : fullName[..dot];
    }
}
