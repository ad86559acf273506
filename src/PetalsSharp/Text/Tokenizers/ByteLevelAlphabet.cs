using System.Text;

namespace PetalsSharp.Text.Tokenizers;

/// <summary>
/// GPT-2's reversible mapping between bytes and printable characters, so that byte-level BPE
/// vocabularies can be stored as JSON strings without control characters or spaces.
/// </summary>
internal static class ByteLevelAlphabet
{
    private static readonly char[] ByteToChar = BuildByteToChar();
    private static readonly Dictionary<char, byte> CharToByte = BuildCharToByte();

    /// <summary>Maps the UTF-8 bytes of <paramref name="text"/> to byte-level characters.</summary>
    public static string Encode(string text)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        return Encode(bytes);
    }

    /// <summary>Maps raw bytes to byte-level characters.</summary>
    public static string Encode(ReadOnlySpan<byte> bytes)
    {
        var chars = new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++)
        {
            chars[i] = ByteToChar[bytes[i]];
        }

        return new string(chars);
    }

    /// <summary>
    /// Maps byte-level characters back to bytes and decodes them as UTF-8 (invalid sequences become U+FFFD).
    /// Characters outside the alphabet, as in added tokens, contribute their own UTF-8 bytes.
    /// </summary>
    public static string Decode(string mapped)
    {
        var bytes = new List<byte>(mapped.Length);
        Span<byte> scratch = stackalloc byte[4];
        foreach (Rune rune in mapped.EnumerateRunes())
        {
            if (rune.IsBmp && CharToByte.TryGetValue((char)rune.Value, out byte b))
            {
                bytes.Add(b);
            }
            else
            {
                int n = rune.EncodeToUtf8(scratch);
                for (int i = 0; i < n; i++)
                {
                    bytes.Add(scratch[i]);
                }
            }
        }

        return Encoding.UTF8.GetString(bytes.ToArray());
    }

    private static char[] BuildByteToChar()
    {
        // Bytes that are already printable keep their code point; the rest are moved to 256 and up in byte order.
        var map = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            map[b] = printable ? (char)b : (char)next++;
        }

        return map;
    }

    private static Dictionary<char, byte> BuildCharToByte()
    {
        var map = new Dictionary<char, byte>(256);
        for (int b = 0; b < 256; b++)
        {
            map[ByteToChar[b]] = (byte)b;
        }

        return map;
    }
}
