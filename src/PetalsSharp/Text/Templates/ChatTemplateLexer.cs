using System.Globalization;
using System.Text;

namespace PetalsSharp.Text.Templates;

/// <summary>What a template is cut into: literal text, <c>{{ expression }}</c> and <c>{% statement %}</c>.</summary>
internal enum SegmentKind { Text, Output, Statement }

/// <summary>One piece of a template; <see cref="Tokens"/> is empty for text.</summary>
internal sealed record Segment(SegmentKind Kind, string Text, IReadOnlyList<Token> Tokens, int Line);

internal enum TokenKind { Name, String, Integer, Float, Operator, End }

internal sealed record Token(TokenKind Kind, string Text, int Line)
{
    public object? Value { get; init; }
    public override string ToString() => Kind == TokenKind.End ? "end of tag" : $"'{Text}'";
}

/// <summary>
/// Cuts a chat template into segments with the whitespace rules transformers renders with
/// (<c>trim_blocks=True, lstrip_blocks=True</c>, plus <c>-</c> markers), and tokenizes the tags.
/// </summary>
internal static class ChatTemplateLexer
{
    static readonly string[] Operators =
        ["//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|", "="];

    public static List<Segment> Split(string source)
    {
        var segments = new List<Segment>();
        var text = new StringBuilder();
        bool trimNextNewline = false, stripNextWhitespace = false;
        int pos = 0, line = 1;
        while (pos < source.Length)
        {
            int open = NextOpen(source, pos);
            string literal = source[pos..(open < 0 ? source.Length : open)];
            bool atLineStart = pos == 0 || source[pos - 1] == '\n';
            if (stripNextWhitespace) literal = literal.TrimStart();
            else if (trimNextNewline && literal.StartsWith('\n')) (literal, atLineStart) = (literal[1..], true);
            else if (trimNextNewline && literal.StartsWith("\r\n", StringComparison.Ordinal)) (literal, atLineStart) = (literal[2..], true);
            trimNextNewline = stripNextWhitespace = false;
            line += Count(source, pos, open < 0 ? source.Length : open);
            if (open < 0)
            {
                text.Append(literal);
                break;
            }
            char kind = source[open + 1];
            string close = kind switch { '{' => "}}", '%' => "%}", _ => "#}" };
            int bodyStart = open + 2;
            char modifier = bodyStart < source.Length ? source[bodyStart] : ' ';
            if (modifier == '-') literal = literal.TrimEnd();
            else if (modifier != '+' && kind != '{') literal = LstripBlock(literal, atLineStart);
            if (modifier is '-' or '+') bodyStart++;
            text.Append(literal);

            int end = source.IndexOf(close, bodyStart, StringComparison.Ordinal);
            if (kind != '#') end = FindClose(source, bodyStart, close, line);
            if (end < 0) throw new ChatTemplateException($"line {line}: '{source[open..(open + 2)]}' is never closed by '{close}'");
            int bodyEnd = end;
            if (bodyEnd > bodyStart && source[bodyEnd - 1] == '-') { bodyEnd--; stripNextWhitespace = true; }
            else if (bodyEnd > bodyStart && source[bodyEnd - 1] == '+') bodyEnd--;
            else if (kind != '{') trimNextNewline = true;
            string body = source[bodyStart..bodyEnd];

            if (kind != '#')
            {
                if (text.Length > 0) segments.Add(new Segment(SegmentKind.Text, text.ToString(), [], line));
                text.Clear();
                var tokens = Tokenize(body, line);
                if (tokens.Count == 1) throw new ChatTemplateException($"line {line}: empty '{source[open..(open + 2)]} {close}' tag");
                segments.Add(new Segment(kind == '{' ? SegmentKind.Output : SegmentKind.Statement, body, tokens, line));
            }
            line += Count(source, open, end);
            pos = end + 2;
        }
        if (text.Length > 0) segments.Add(new Segment(SegmentKind.Text, text.ToString(), [], line));
        return segments;
    }

    static int NextOpen(string s, int from)
    {
        for (int i = s.IndexOf('{', from); i >= 0 && i + 1 < s.Length; i = s.IndexOf('{', i + 1))
            if (s[i + 1] is '{' or '%' or '#') return i;
        return -1;
    }

    // A closing marker inside a string literal ('%}' in a message) does not end the tag.
    static int FindClose(string s, int from, string close, int line)
    {
        for (int i = from; i < s.Length - 1; i++)
        {
            char c = s[i];
            if (c is '\'' or '"')
            {
                int j = i + 1;
                while (j < s.Length && s[j] != c) j += s[j] == '\\' ? 2 : 1;
                if (j >= s.Length) throw new ChatTemplateException($"line {line}: unterminated string literal");
                i = j;
            }
            else if (c == close[0] && s[i + 1] == close[1]) return i;
        }
        return -1;
    }

    // lstrip_blocks: spaces and tabs between the line start and a block tag are not output.
    static string LstripBlock(string literal, bool atLineStart)
    {
        int i = literal.Length;
        while (i > 0 && literal[i - 1] is ' ' or '\t') i--;
        return (i == 0 && atLineStart) || (i > 0 && literal[i - 1] == '\n') ? literal[..i] : literal;
    }

    static int Count(string s, int from, int to)
    {
        int n = 0;
        for (int i = from; i < to; i++) if (s[i] == '\n') n++;
        return n;
    }

    public static List<Token> Tokenize(string body, int line)
    {
        var tokens = new List<Token>();
        int i = 0;
        while (i < body.Length)
        {
            char c = body[i];
            if (c == '\n') { line++; i++; continue; }
            if (char.IsWhiteSpace(c)) { i++; continue; }
            if (char.IsLetter(c) || c == '_')
            {
                int start = i;
                while (i < body.Length && (char.IsLetterOrDigit(body[i]) || body[i] == '_')) i++;
                tokens.Add(new Token(TokenKind.Name, body[start..i], line));
            }
            else if (char.IsDigit(c))
            {
                int start = i;
                while (i < body.Length && (char.IsDigit(body[i]) || body[i] == '_')) i++;
                bool isFloat = i + 1 < body.Length && body[i] == '.' && char.IsDigit(body[i + 1]);
                if (isFloat) for (i++; i < body.Length && char.IsDigit(body[i]); i++) { }
                string digits = body[start..i].Replace("_", "");
                tokens.Add(isFloat
                    ? new Token(TokenKind.Float, digits, line) { Value = double.Parse(digits, CultureInfo.InvariantCulture) }
                    : new Token(TokenKind.Integer, digits, line) { Value = long.Parse(digits, CultureInfo.InvariantCulture) });
            }
            else if (c is '\'' or '"')
            {
                var (value, next) = ReadString(body, i, line);
                tokens.Add(new Token(TokenKind.String, body[i..next], line) { Value = value });
                i = next;
            }
            else
            {
                string? op = Operators.FirstOrDefault(o => string.CompareOrdinal(body, i, o, 0, o.Length) == 0);
                if (op is null) throw new ChatTemplateException($"line {line}: unexpected character '{c}'");
                tokens.Add(new Token(TokenKind.Operator, op, line));
                i += op.Length;
            }
        }
        tokens.Add(new Token(TokenKind.End, "", line));
        return tokens;
    }

    // Python string escapes, as Jinja decodes them: '<<SYS>>\n' in a template is a newline.
    static (string Value, int Next) ReadString(string s, int start, int line)
    {
        char quote = s[start];
        var sb = new StringBuilder();
        for (int i = start + 1; i < s.Length; i++)
        {
            char c = s[i];
            if (c == quote) return (sb.ToString(), i + 1);
            if (c != '\\' || i + 1 >= s.Length) { sb.Append(c); continue; }
            char e = s[++i];
            switch (e)
            {
                case 'n': sb.Append('\n'); break;
                case 't': sb.Append('\t'); break;
                case 'r': sb.Append('\r'); break;
                case '0': sb.Append('\0'); break;
                case '\\' or '\'' or '"': sb.Append(e); break;
                case '\n': break;
                case 'u' when i + 4 < s.Length:
                    sb.Append((char)int.Parse(s.AsSpan(i + 1, 4), NumberStyles.HexNumber, CultureInfo.InvariantCulture));
                    i += 4;
                    break;
                case 'x' when i + 2 < s.Length:
                    sb.Append((char)int.Parse(s.AsSpan(i + 1, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture));
                    i += 2;
                    break;
                default: sb.Append('\\').Append(e); break;
            }
        }
        throw new ChatTemplateException($"line {line}: unterminated string literal");
    }
}
