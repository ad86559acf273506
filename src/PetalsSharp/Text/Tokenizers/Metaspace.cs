using System.Text.Json;

namespace PetalsSharp.Text.Tokenizers;

/// <summary>Metaspace's <c>prepend_scheme</c>: when the replacement character goes in front of a piece.</summary>
internal enum PrependScheme { Always, First, Never }

/// <summary>
/// The Metaspace settings as HF <c>tokenizers</c> reads them: <c>replacement</c> (one character, ▁ by default), and
/// <c>prepend_scheme</c>, or the older <c>add_prefix_space</c> (true = always, false = never) when a file predates it.
/// </summary>
internal readonly record struct MetaspaceOptions(char Replacement, PrependScheme Scheme, bool SplitPieces)
{
    public static MetaspaceOptions Parse(JsonElement e, string file, string what)
    {
        string replacement = HfJson.String(e, "replacement") ?? "\u2581";
        if (replacement.Length != 1) throw HfJson.Invalid(file, $"{what} replacement must be one character (got '{replacement}')");
        var scheme = HfJson.String(e, "prepend_scheme") switch
        {
            null => HfJson.Bool(e, "add_prefix_space", true) ? PrependScheme.Always : PrependScheme.Never,
            "always" => PrependScheme.Always,
            "first" => PrependScheme.First,
            "never" => PrependScheme.Never,
            var other => throw HfJson.Invalid(file, $"{what} prepend_scheme must be always, first or never (got '{other}')"),
        };
        return new(replacement[0], scheme, HfJson.Bool(e, "split", true));
    }
}

/// <summary>
/// SentencePiece's space handling without a normalizer (Mistral's <c>legacy: false</c> files): spaces become the
/// replacement character, which is also put in front of the piece as <c>prepend_scheme</c> says (with <c>first</c>,
/// only in front of the text that begins the input, not after an added token such as <c>[INST]</c>), and with
/// <c>split</c> each replacement character starts a new word.
/// </summary>
internal sealed class MetaspacePreTokenizer(MetaspaceOptions options) : HfPreTokenizer
{
    public static MetaspacePreTokenizer FromJson(JsonElement e, string file) => new(MetaspaceOptions.Parse(e, file, "Metaspace pre_tokenizer"));

    public override void Split(string piece, List<string> output, bool atStart)
    {
        char r = options.Replacement;
        piece = piece.Replace(' ', r);
        bool prepend = options.Scheme == PrependScheme.Always || (options.Scheme == PrependScheme.First && atStart);
        if (prepend && !piece.StartsWith(r))
        {
            piece = r + piece;
        }

        if (!options.SplitPieces)
        {
            if (piece.Length > 0) output.Add(piece);
            return;
        }

        // MergedWithNext: every replacement character opens a word.
        int start = 0;
        for (int i = 1; i < piece.Length; i++)
        {
            if (piece[i] == r)
            {
                output.Add(piece[start..i]);
                start = i;
            }
        }

        if (start < piece.Length) output.Add(piece[start..]);
    }
}

/// <summary>
/// Metaspace's decoder, as HF <c>tokenizers</c> runs it: replacement characters become spaces, except in the first
/// token of the sequence, where they are dropped (unless <c>prepend_scheme</c> is <c>never</c>).
/// </summary>
internal sealed class MetaspaceDecoder(MetaspaceOptions options) : HfDecoder
{
    public static MetaspaceDecoder FromJson(JsonElement e, string file) => new(MetaspaceOptions.Parse(e, file, "Metaspace decoder"));

    public override List<string> Apply(List<string> tokens)
    {
        var output = new List<string>(tokens.Count);
        for (int i = 0; i < tokens.Count; i++)
        {
            bool drop = i == 0 && options.Scheme != PrependScheme.Never;
            output.Add(drop ? tokens[i].Replace(options.Replacement.ToString(), "") : tokens[i].Replace(options.Replacement, ' '));
        }

        return output;
    }
}
