namespace PetalsSharp.Text.Templates;

/// <summary>
/// Parses the segments of a chat template into a tree, with Jinja's operator precedence. Anything outside the
/// supported subset (macros, blocks, includes, unknown filters or tests) is rejected here, before rendering.
/// </summary>
internal sealed class ChatTemplateParser
{
    readonly List<Segment> _segments;
    int _seg;
    List<Token> _tokens = [];
    int _pos;

    ChatTemplateParser(List<Segment> segments) => _segments = segments;

    public static IReadOnlyList<Node> Parse(string source)
    {
        var parser = new ChatTemplateParser(ChatTemplateLexer.Split(source));
        var body = parser.ParseBody([], out var stop);
        if (stop is not null) throw new ChatTemplateException($"line {parser.Line}: unexpected '{{% {stop} %}}'");
        return body;
    }

    int Line => _tokens.Count > 0 ? Peek.Line : _seg < _segments.Count ? _segments[_seg].Line : _segments.Count > 0 ? _segments[^1].Line : 1;
    Token Peek => _tokens[_pos];

    // Reads nodes until a statement whose keyword is in stopAt (left as the current tag) or the end.
    List<Node> ParseBody(string[] stopAt, out string? stop)
    {
        var nodes = new List<Node>();
        stop = null;
        while (_seg < _segments.Count)
        {
            var s = _segments[_seg];
            if (s.Kind == SegmentKind.Text) { nodes.Add(new TextNode(s.Text, s.Line)); _seg++; continue; }
            _tokens = [.. s.Tokens];
            _pos = 0;
            if (s.Kind == SegmentKind.Output)
            {
                nodes.Add(new OutputNode(ParseExpr(), s.Line));
                ExpectEnd();
                _seg++;
                continue;
            }
            var keyword = Peek.Kind == TokenKind.Name ? Peek.Text : throw Error($"expected a statement name, got {Peek}");
            if (stopAt.Contains(keyword)) { stop = keyword; return nodes; }
            _pos++;
            _seg++;
            nodes.Add(keyword switch
            {
                "if" => ParseIf(s.Line),
                "for" => ParseFor(s.Line),
                "set" => ParseSet(s.Line),
                "break" or "continue" => EndThen(new LoopControlNode(keyword == "break", s.Line)),
                "generation" => ParseTransparent("endgeneration", s.Line),
                "endif" or "endfor" or "elif" or "else" or "endgeneration" => throw Error($"'{keyword}' without an opening tag"),
                _ => throw Error($"unsupported statement '{{% {keyword} %}}' (supported: if/elif/else, for, set, break, continue)"),
            });
        }
        if (stopAt.Length > 0) throw new ChatTemplateException($"line {Line}: template ended without '{{% {stopAt[^1]} %}}'");
        return nodes;
    }

    Node EndThen(Node node) { ExpectEnd(); return node; }

    Node ParseIf(int line)
    {
        var branches = new List<(Expr, IReadOnlyList<Node>)>();
        var condition = ParseExpr();
        ExpectEnd();
        List<Node>? elseBody = null;
        while (true)
        {
            var body = ParseBody(["elif", "else", "endif"], out var stop);
            branches.Add((condition, body));
            _pos++;
            _seg++;
            if (stop == "elif") { condition = ParseExpr(); ExpectEnd(); continue; }
            ExpectEnd();
            if (stop == "else")
            {
                elseBody = ParseBody(["endif"], out _);
                _pos++;
                _seg++;
                ExpectEnd();
            }
            return new IfNode(branches, elseBody, line);
        }
    }

    Node ParseFor(int line)
    {
        var targets = new List<string> { ExpectName() };
        while (TryOp(",")) targets.Add(ExpectName());
        if (!TryName("in")) throw Error($"expected 'in' in a for loop, got {Peek}");
        var iterable = ParseExpr(allowCondExpr: false);
        Expr? filter = TryName("if") ? ParseExpr(allowCondExpr: false) : null;
        if (Peek.Kind == TokenKind.Name && Peek.Text == "recursive") throw Error("unsupported 'recursive' for loop");
        ExpectEnd();
        var body = ParseBody(["else", "endfor"], out var stop);
        _pos++;
        _seg++;
        ExpectEnd();
        List<Node>? elseBody = null;
        if (stop == "else")
        {
            elseBody = ParseBody(["endfor"], out _);
            _pos++;
            _seg++;
            ExpectEnd();
        }
        return new ForNode(targets, iterable, filter, body, elseBody, line);
    }

    Node ParseSet(int line)
    {
        string name = ExpectName();
        string? attribute = TryOp(".") ? ExpectName() : null;
        if (Peek.Text == ",") throw Error("unsupported tuple assignment in '{% set %}'");
        if (!TryOp("=")) throw Error("unsupported block '{% set NAME %}...{% endset %}'; use '{% set NAME = value %}'");
        var value = ParseExpr();
        ExpectEnd();
        return new SetNode(name, attribute, value, line);
    }

    Node ParseTransparent(string end, int line)
    {
        ExpectEnd();
        var body = ParseBody([end], out _);
        _pos++;
        _seg++;
        ExpectEnd();
        return new IfNode([(new LiteralExpr(true, line), body)], null, line);
    }

    // ---- expressions, lowest precedence first ----

    Expr ParseExpr(bool allowCondExpr = true)
    {
        var expr = ParseOr();
        if (allowCondExpr && TryName("if"))
        {
            var condition = ParseOr();
            Expr? otherwise = TryName("else") ? ParseExpr() : null;
            return new CondExpr(condition, expr, otherwise, expr.Line);
        }
        return expr;
    }

    Expr ParseOr()
    {
        var left = ParseAnd();
        while (TryName("or")) left = new BinaryExpr("or", left, ParseAnd(), left.Line);
        return left;
    }

    Expr ParseAnd()
    {
        var left = ParseNot();
        while (TryName("and")) left = new BinaryExpr("and", left, ParseNot(), left.Line);
        return left;
    }

    Expr ParseNot() => TryName("not") ? new UnaryExpr("not", ParseNot(), Line) : ParseCompare();

    Expr ParseCompare()
    {
        var left = ParseMath1();
        while (true)
        {
            if (Peek.Kind == TokenKind.Operator && Peek.Text is "==" or "!=" or "<" or ">" or "<=" or ">=")
            {
                string op = Next().Text;
                left = new BinaryExpr(op, left, ParseMath1(), left.Line);
            }
            else if (TryName("in")) left = new BinaryExpr("in", left, ParseMath1(), left.Line);
            else if (Peek.Text == "not" && _tokens[_pos + 1].Text == "in")
            {
                _pos += 2;
                left = new BinaryExpr("not in", left, ParseMath1(), left.Line);
            }
            else return left;
        }
    }

    Expr ParseMath1()
    {
        var left = ParseConcat();
        while (Peek.Kind == TokenKind.Operator && Peek.Text is "+" or "-")
            left = new BinaryExpr(Next().Text, left, ParseConcat(), left.Line);
        return left;
    }

    Expr ParseConcat()
    {
        var left = ParseMath2();
        while (TryOp("~")) left = new BinaryExpr("~", left, ParseMath2(), left.Line);
        return left;
    }

    Expr ParseMath2()
    {
        var left = ParseUnary();
        while (Peek.Kind == TokenKind.Operator && Peek.Text is "*" or "/" or "//" or "%")
            left = new BinaryExpr(Next().Text, left, ParseUnary(), left.Line);
        if (Peek.Text == "**") throw Error("unsupported operator '**'");
        return left;
    }

    Expr ParseUnary()
    {
        if (Peek.Kind == TokenKind.Operator && Peek.Text is "-" or "+")
        {
            string op = Next().Text;
            return new UnaryExpr(op, ParseUnary(), Line);
        }
        return ParseFilters(ParsePostfix(ParsePrimary()));
    }

    Expr ParsePrimary()
    {
        var t = Next();
        switch (t.Kind)
        {
            case TokenKind.String:
                var text = (string)t.Value!;
                while (Peek.Kind == TokenKind.String) text += (string)Next().Value!;   // 'a' 'b' is 'ab', as in Python
                return new LiteralExpr(text, t.Line);
            case TokenKind.Integer or TokenKind.Float:
                return new LiteralExpr(t.Value, t.Line);
            case TokenKind.Name:
                return t.Text switch
                {
                    "true" or "True" => new LiteralExpr(true, t.Line),
                    "false" or "False" => new LiteralExpr(false, t.Line),
                    "none" or "None" => new LiteralExpr(null, t.Line),
                    _ => new NameExpr(t.Text, t.Line),
                };
        }
        if (t.Text == "(")
        {
            var inner = ParseExpr();
            if (Peek.Text == ",") throw Error("unsupported tuple literal; use a list [a, b]");
            Expect(")");
            return inner;
        }
        if (t.Text == "[")
        {
            var items = new List<Expr>();
            while (!TryOp("]"))
            {
                items.Add(ParseExpr());
                if (!TryOp(",")) { Expect("]"); break; }
            }
            return new ListExpr(items, t.Line);
        }
        if (t.Text == "{")
        {
            var items = new List<(Expr, Expr)>();
            while (!TryOp("}"))
            {
                var key = ParseExpr();
                Expect(":");
                items.Add((key, ParseExpr()));
                if (!TryOp(",")) { Expect("}"); break; }
            }
            return new DictExpr(items, t.Line);
        }
        throw Error($"unexpected {t}");
    }

    Expr ParsePostfix(Expr expr)
    {
        while (true)
        {
            if (TryOp(".")) expr = new AttrExpr(expr, Peek.Kind == TokenKind.Integer ? Next().Text : ExpectName(), expr.Line);
            else if (TryOp("[")) expr = ParseSubscript(expr);
            else if (TryOp("("))
            {
                var (args, kwargs) = ParseArgs();
                expr = new CallExpr(expr, args, kwargs, expr.Line);
            }
            else return expr;
        }
    }

    Expr ParseSubscript(Expr target)
    {
        Expr? start = Peek.Text == ":" ? null : ParseExpr();
        if (TryOp("]")) return new IndexExpr(target, start!, target.Line);
        Expect(":");
        Expr? stop = Peek.Text is ":" or "]" ? null : ParseExpr();
        Expr? step = null;
        if (TryOp(":") && Peek.Text != "]") step = ParseExpr();
        Expect("]");
        return new SliceExpr(target, start, stop, step, target.Line);
    }

    Expr ParseFilters(Expr expr)
    {
        while (true)
        {
            if (TryOp("|"))
            {
                string name = ExpectName();
                if (!ChatTemplateBuiltins.IsFilter(name)) throw Error($"unsupported filter '{name}'");
                var (args, kwargs) = TryOp("(") ? ParseArgs() : ([], []);
                expr = ParsePostfix(new FilterExpr(expr, name, args, kwargs, expr.Line));
            }
            else if (TryName("is"))
            {
                bool negated = TryName("not");
                string name = Peek.Kind == TokenKind.Name ? Next().Text
                    : Peek.Text is "==" or "!=" or "<" or ">" or "<=" or ">=" ? Next().Text : throw Error($"expected a test name after 'is', got {Peek}");
                if (!ChatTemplateBuiltins.IsTest(name)) throw Error($"unsupported test 'is {name}'");
                var args = new List<Expr>();
                if (TryOp("(")) args.AddRange(ParseArgs().Args);
                else if (Peek.Kind is TokenKind.String or TokenKind.Integer or TokenKind.Float || (Peek.Kind == TokenKind.Name && Peek.Text is not ("and" or "or" or "else" or "if" or "not" or "in" or "is")))
                    args.Add(ParsePrimary());
                expr = new TestExpr(expr, name, negated, args, expr.Line);
            }
            else return expr;
        }
    }

    (List<Expr> Args, List<(string, Expr)> Kwargs) ParseArgs()
    {
        var args = new List<Expr>();
        var kwargs = new List<(string, Expr)>();
        while (!TryOp(")"))
        {
            if (Peek.Kind == TokenKind.Name && _tokens[_pos + 1].Text == "=")
            {
                string name = Next().Text;
                _pos++;
                kwargs.Add((name, ParseExpr()));
            }
            else if (kwargs.Count > 0) throw Error("positional argument after a keyword argument");
            else args.Add(ParseExpr());
            if (!TryOp(",")) { Expect(")"); break; }
        }
        return (args, kwargs);
    }

    // ---- token helpers ----

    Token Next()
    {
        var t = _tokens[_pos];
        if (t.Kind == TokenKind.End) throw Error("unexpected end of tag");
        _pos++;
        return t;
    }

    bool TryOp(string op)
    {
        if (Peek.Kind != TokenKind.Operator || Peek.Text != op) return false;
        _pos++;
        return true;
    }

    bool TryName(string name)
    {
        if (Peek.Kind != TokenKind.Name || Peek.Text != name) return false;
        _pos++;
        return true;
    }

    void Expect(string op)
    {
        if (!TryOp(op)) throw Error($"expected '{op}', got {Peek}");
    }

    string ExpectName() => Peek.Kind == TokenKind.Name ? Next().Text : throw Error($"expected a name, got {Peek}");

    void ExpectEnd()
    {
        if (Peek.Kind != TokenKind.End) throw Error($"unexpected {Peek}");
    }

    ChatTemplateException Error(string message) => new($"line {Line}: {message}");
}
