using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace PetalsSharp.Text.Tokenizers;

/// <summary>A <c>tokenizer.json</c> normalizer: rewrites text between added tokens before it is split.</summary>
internal abstract class HfNormalizer
{
    private const string SupportedTypes = "Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD, Lowercase";

    public abstract string Apply(string text);

    public static HfNormalizer? Parse(JsonElement e, string file)
    {
        if (HfJson.IsNull(e))
        {
            return null;
        }

        string? type = HfJson.Type(e);
        return type switch
        {
            "Sequence" => new SequenceNormalizer(
                HfJson.Array(e, "normalizers", file, "normalizer Sequence").Select(n => Parse(n, file)).OfType<HfNormalizer>().ToArray()),
            "Prepend" => new PrependNormalizer(HfJson.String(e, "prepend") ?? throw HfJson.Invalid(file, "Prepend normalizer has no 'prepend'")),
            "Replace" => new ReplaceNormalizer(HfJson.Pattern(e, file, "Replace normalizer"), HfJson.String(e, "content") ?? string.Empty),
            "NFC" => new UnicodeNormalizer(NormalizationForm.FormC),
            "NFD" => new UnicodeNormalizer(NormalizationForm.FormD),
            "NFKC" => new UnicodeNormalizer(NormalizationForm.FormKC),
            "NFKD" => new UnicodeNormalizer(NormalizationForm.FormKD),
            "Lowercase" => new LowercaseNormalizer(),
            _ => throw HfJson.Unsupported(file, "normalizer", type, SupportedTypes),
        };
    }

    private sealed class SequenceNormalizer(HfNormalizer[] steps) : HfNormalizer
    {
        public override string Apply(string text)
        {
            foreach (var step in steps)
            {
                text = step.Apply(text);
            }

            return text;
        }
    }

    private sealed class PrependNormalizer(string prefix) : HfNormalizer
    {
        // HF leaves empty text empty, so a segment between two added tokens gains nothing.
        public override string Apply(string text) => text.Length == 0 ? text : prefix + text;
    }

    private sealed class ReplaceNormalizer(Regex pattern, string content) : HfNormalizer
    {
        // Built from UnicodeText.Matches rather than Regex.Replace so that a regex pattern sees supplementary code
        // points as HF does; the content is literal in HF, with no $-substitutions.
        public override string Apply(string text)
        {
            StringBuilder? sb = null;
            int last = 0;
            foreach (var (index, length) in UnicodeText.Matches(pattern, text))
            {
                if (length == 0)
                {
                    continue;
                }

                sb ??= new StringBuilder(text.Length + content.Length);
                sb.Append(text, last, index - last).Append(content);
                last = index + length;
            }

            return sb is null ? text : sb.Append(text, last, text.Length - last).ToString();
        }
    }

    private sealed class UnicodeNormalizer(NormalizationForm form) : HfNormalizer
    {
        public override string Apply(string text) => text.Normalize(form);
    }

    private sealed class LowercaseNormalizer : HfNormalizer
    {
        public override string Apply(string text) => text.ToLowerInvariant();
    }
}
