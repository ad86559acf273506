namespace PetalsSharp.Models.Quant;

/// <summary>
/// How a block linear's weight is held. Both quantized formats cut each weight row (along the input dimension) into
/// blocks of 34 bytes: an f16 scale <c>d</c>, then 32 payload bytes, and a value is <c>d · q</c> with <c>q</c> a
/// small integer. The row is padded with zeros to whole blocks, so any input width works (stories260K's MLP has 172).
/// </summary>
public enum QuantFormat
{
    /// <summary>The stored dtype, exact.</summary>
    None,

    /// <summary>Q8_0-like: 32 values per block, <c>q</c> the int8 payload byte itself (8.5 bits per weight).</summary>
    Int8,

    /// <summary>
    /// NF4 (the bitsandbytes code book, absmax scale per 64 values, as Petals serves): 64 values per block, byte j of
    /// the payload holding value j in its low nibble and value j + 32 in its high one; <c>q</c> is the nibble's code
    /// book entry times 127, rounded (<see cref="BlockQuant.Nf4Codes"/>), so kernels look codes up as int8
    /// (4.25 bits per weight).
    /// </summary>
    Nf4,
}

/// <summary>Names and sizes of the formats.</summary>
public static class QuantFormats
{
    /// <summary>Bytes of one block: the f16 scale and 32 payload bytes.</summary>
    public const int BlockBytes = 34;

    /// <summary>The name the CLI, the DHT record and <c>bench --json</c> use.</summary>
    public static string Name(this QuantFormat f) => f switch
    {
        QuantFormat.None => "none",
        QuantFormat.Int8 => "int8",
        QuantFormat.Nf4 => "nf4",
        _ => throw new ArgumentOutOfRangeException(nameof(f)),
    };

    /// <summary>Parses a name (<c>none</c>, <c>int8</c>, <c>nf4</c>; case-insensitive) or throws with the accepted ones.</summary>
    public static QuantFormat Parse(string name) => name.Trim().ToLowerInvariant() switch
    {
        "none" or "" => QuantFormat.None,
        "int8" or "q8" or "q8_0" => QuantFormat.Int8,
        "nf4" => QuantFormat.Nf4,
        _ => throw new ArgumentException($"unknown quantization '{name}' (none, int8 or nf4)"),
    };

    /// <summary>Input values per block.</summary>
    public static int BlockValues(this QuantFormat f) => f switch
    {
        QuantFormat.Int8 => 32,
        QuantFormat.Nf4 => 64,
        _ => throw new ArgumentException($"{f} has no blocks"),
    };

    /// <summary>Blocks of a row of <paramref name="inFeatures"/> values.</summary>
    public static int Blocks(this QuantFormat f, long inFeatures) => (int)((inFeatures + f.BlockValues() - 1) / f.BlockValues());

    /// <summary>Bytes of one packed row.</summary>
    public static int RowBytes(this QuantFormat f, long inFeatures) => f.Blocks(inFeatures) * BlockBytes;

    /// <summary>Bits per weight, scale included (8.5 and 4.25).</summary>
    public static double BitsPerWeight(this QuantFormat f) => f == QuantFormat.None ? double.NaN : BlockBytes * 8.0 / f.BlockValues();

    /// <summary>
    /// Bits per weight a server holds in memory: the packed bytes plus the f32 copy of each block's scale that packed
    /// layers keep for the kernels (<see cref="SideScales"/>): 9.5 and 4.75.
    /// </summary>
    public static double ResidentBitsPerWeight(this QuantFormat f) => f == QuantFormat.None ? double.NaN : (BlockBytes + sizeof(float)) * 8.0 / f.BlockValues();
}
