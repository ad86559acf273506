using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace PetalsSharp.Text.Tokenizers;

/// <summary>A <c>tokenizer.json</c> decoder: turns the token strings of a sequence back into text pieces.</summary>
internal abstract class HfDecoder
{
    private const string SupportedTypes = "Sequence, Replace, ByteFallback, Fuse, Strip, ByteLevel, Metaspace";

    public abstract List<string> Apply(List<string> tokens);

    public static HfDecoder? Parse(JsonElement e, string file)
    {
        if (HfJson.IsNull(e))
        {
            return null;
        }

        string? type = HfJson.Type(e);
        return type switch
        {
            "Sequence" => new SequenceDecoder(
                HfJson.Array(e, "decoders", file, "decoder Sequence").Select(d => Parse(d, file)).OfType<HfDecoder>().ToArray()),
            "Replace" => new ReplaceDecoder(HfJson.Pattern(e, file, "Replace decoder"), HfJson.String(e, "content") ?? string.Empty),
            "ByteFallback" => new ByteFallbackDecoder(),
            "Fuse" => new FuseDecoder(),
            "Strip" => new StripDecoder(
                HfJson.String(e, "content") ?? " ", HfJson.Int(e, "start", 0), HfJson.Int(e, "stop", 0)),
            "ByteLevel" => new ByteLevelDecoder(),
            "Metaspace" => MetaspaceDecoder.FromJson(e, file),
            _ => throw HfJson.Unsupported(file, "decoder", type, SupportedTypes),
        };
    }

    /// <summary>Parses a byte piece such as <c>&lt;0x0A&gt;</c>.</summary>
    public static bool TryParseBytePiece(string token, out byte value)
    {
        value = 0;
        return token.Length == 6 && token.StartsWith("<0x", StringComparison.Ordinal) && token[5] == '>'
            && byte.TryParse(token.AsSpan(3, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out value);
    }

    private sealed class SequenceDecoder(HfDecoder[] steps) : HfDecoder
    {
        public override List<string> Apply(List<string> tokens)
        {
            foreach (var step in steps)
            {
                tokens = step.Apply(tokens);
            }

            return tokens;
        }
    }

    private sealed class ReplaceDecoder(Regex pattern, string content) : HfDecoder
    {
        private readonly string _replacement = content.Replace("$", "$$", StringComparison.Ordinal);

        public override List<string> Apply(List<string> tokens) => tokens.ConvertAll(t => pattern.Replace(t, _replacement));
    }

    /// <summary>Joins runs of byte pieces into text; like HF, a run that is not valid UTF-8 becomes one U+FFFD per byte.</summary>
    private sealed class ByteFallbackDecoder : HfDecoder
    {
        private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

        public override List<string> Apply(List<string> tokens)
        {
            var output = new List<string>(tokens.Count);
            var pending = new List<byte>();
            foreach (var token in tokens)
            {
                if (TryParseBytePiece(token, out byte b))
                {
                    pending.Add(b);
                    continue;
                }

                Flush(pending, output);
                output.Add(token);
            }

            Flush(pending, output);
            return output;
        }

        private static void Flush(List<byte> pending, List<string> output)
        {
            if (pending.Count == 0)
            {
                return;
            }

            try
            {
                output.Add(StrictUtf8.GetString(pending.ToArray()));
            }
            catch (DecoderFallbackException)
            {
                for (int i = 0; i < pending.Count; i++)
                {
                    output.Add("\uFFFD");
                }
            }

            pending.Clear();
        }
    }

    private sealed class FuseDecoder : HfDecoder
    {
        public override List<string> Apply(List<string> tokens) => [string.Concat(tokens)];
    }

    /// <summary>Removes up to <c>start</c> leading and <c>stop</c> trailing copies of one character from every token.</summary>
    private sealed class StripDecoder(string content, int start, int stop) : HfDecoder
    {
        public override List<string> Apply(List<string> tokens) => tokens.ConvertAll(Strip);

        private string Strip(string token)
        {
            if (content.Length != 1)
            {
                return token;
            }

            char c = content[0];
            int from = 0;
            while (from < start && from < token.Length && token[from] == c)
            {
                from++;
            }

            int to = token.Length;
            while (token.Length - to < stop && to > from && token[to - 1] == c)
            {
                to--;
            }

            return token[from..to];
        }
    }

    private sealed class ByteLevelDecoder : HfDecoder
    {
        public override List<string> Apply(List<string> tokens) => [ByteLevelAlphabet.Decode(string.Concat(tokens))];
    }
}
