using TorchSharp;

namespace PetalsSharp.Models.Weights;

/// <summary>Maps safetensors dtype names to TorchSharp scalar types and element sizes.</summary>
public static class SafeTensorsDType
{
    private static readonly (string Name, torch.ScalarType Type, int Size)[] Table =
    [
        ("F64", torch.ScalarType.Float64, 8),
        ("F32", torch.ScalarType.Float32, 4),
        ("F16", torch.ScalarType.Float16, 2),
        ("BF16", torch.ScalarType.BFloat16, 2),
        ("I64", torch.ScalarType.Int64, 8),
        ("I32", torch.ScalarType.Int32, 4),
        ("I16", torch.ScalarType.Int16, 2),
        ("I8", torch.ScalarType.Int8, 1),
        ("U8", torch.ScalarType.Byte, 1),
        ("BOOL", torch.ScalarType.Bool, 1),
    ];

    /// <summary>The dtype names this implementation reads and writes.</summary>
    public static IReadOnlyList<string> Supported { get; } = Table.Select(e => e.Name).ToArray();

    /// <summary>Looks up a safetensors dtype name (case-sensitive, as the format specifies).</summary>
    /// <returns>False when the name is not supported.</returns>
    public static bool TryParse(string name, out torch.ScalarType type, out int size)
    {
        foreach (var e in Table)
        {
            if (e.Name == name)
            {
                type = e.Type;
                size = e.Size;
                return true;
            }
        }
        type = default;
        size = 0;
        return false;
    }

    /// <summary>The safetensors dtype name for a scalar type, or null when it has none here.</summary>
    public static string? NameOf(torch.ScalarType type)
    {
        foreach (var e in Table)
        {
            if (e.Type == type) return e.Name;
        }
        return null;
    }
}
