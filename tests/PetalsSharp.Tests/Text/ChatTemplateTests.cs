using PetalsSharp.Text.Templates;
using Xunit;

namespace PetalsSharp.Tests.Text;

/// <summary>
/// Real chat templates from tokenizer_config.json files (TestData/chat-templates), each rendered for a
/// system + user + assistant + user conversation. The expected strings follow from the templates under the
/// settings transformers renders with (trim_blocks, lstrip_blocks).
/// </summary>
public class ChatTemplateTests
{
    static readonly ChatTurn[] Conversation =
    [
        new("system", "You are a helpful assistant."),
        new("user", "Hello!"),
        new("assistant", "Hi! How can I help?"),
        new("user", "What is 2+2?"),
    ];

    internal static ChatTemplate Load(string name)
    {
        string dir = Path.Combine(Path.GetTempPath(), "petals-chat-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            File.Copy(Path.Combine(AppContext.BaseDirectory, "TestData", "chat-templates", name + ".json"), Path.Combine(dir, "tokenizer_config.json"));
            return ChatTemplate.TryLoad(dir) ?? throw new InvalidOperationException("no template");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Llama2Chat() => Assert.Equal(
        "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nHello! [/INST] Hi! How can I help? </s><s>[INST] What is 2+2? [/INST]",
        Load("llama-2-chat").Apply(Conversation));

    [Fact]
    public void Llama3Instruct()
    {
        var t = Load("llama-3-instruct");
        const string turns = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
            + "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
            + "<|start_header_id|>assistant<|end_header_id|>\n\nHi! How can I help?<|eot_id|>"
            + "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>";
        Assert.Equal(turns + "<|start_header_id|>assistant<|end_header_id|>\n\n", t.Apply(Conversation));
        Assert.Equal(turns, t.Apply(Conversation, addGenerationPrompt: false));
    }

    [Fact]
    public void Llama31InstructFullTemplateNoTools() => Assert.Equal(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        + "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are a helpful assistant.<|eot_id|>"
        + "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
        + "<|start_header_id|>assistant<|end_header_id|>\n\nHi! How can I help?<|eot_id|>"
        + "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        + "<|start_header_id|>assistant<|end_header_id|>\n\n",
        Load("llama-3.1-instruct").Apply(Conversation));

    [Fact]
    public void MixtralInstructRejectsSystemRoleWithTheTemplatesMessage()
    {
        var t = Load("mixtral-instruct");
        var ex = Assert.Throws<ChatTemplateException>(() => t.Apply(Conversation));
        Assert.Equal("Conversation roles must alternate user/assistant/user/assistant/...", ex.Message);
        Assert.True(ex.Raised);
        Assert.Equal("<s>[INST] Hello! [/INST]Hi! How can I help?</s>[INST] What is 2+2? [/INST]", t.Apply(Conversation[1..]));
    }

    /// <summary>
    /// Mistral-7B-Instruct v0.1/v0.2's current template: the system message goes in front of the last user turn,
    /// assistant turns get a leading space and EOS, and it ignores the generation prompt flag.
    /// </summary>
    [Fact]
    public void MistralInstruct()
    {
        var t = Load("mistral-instruct-v0.2");
        const string expected = "<s>[INST] Hello![/INST] Hi! How can I help?</s>[INST] You are a helpful assistant.\n\nWhat is 2+2?[/INST]";
        Assert.Equal(expected, t.Apply(Conversation));
        Assert.Equal(expected, t.Apply(Conversation, addGenerationPrompt: false));
        Assert.Equal("<s>[INST] Hello![/INST]", t.Apply(Conversation[1..2]));
        var ex = Assert.Throws<ChatTemplateException>(() => t.Apply([Conversation[0], Conversation[2]]));
        Assert.Equal("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...", ex.Message);
        Assert.True(ex.Raised);
    }

    /// <summary>Qwen2-Instruct's ChatML: a default system turn when none is given, and the assistant header on request.</summary>
    [Fact]
    public void Qwen2InstructChatMl()
    {
        var t = Load("qwen2-instruct");
        const string turns = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            + "<|im_start|>user\nHello!<|im_end|>\n"
            + "<|im_start|>assistant\nHi! How can I help?<|im_end|>\n"
            + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n";
        Assert.Equal(turns + "<|im_start|>assistant\n", t.Apply(Conversation));
        Assert.Equal(turns, t.Apply(Conversation, addGenerationPrompt: false));
        Assert.Equal("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
            t.Apply(Conversation[1..2]));
    }

    [Fact]
    public void Zephyr() => Assert.Equal(
        "<|system|>\nYou are a helpful assistant.</s>\n<|user|>\nHello!</s>\n<|assistant|>\nHi! How can I help?</s>\n"
        + "<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n",
        Load("zephyr").Apply(Conversation));

    [Fact]
    public void Falcon() => Assert.Equal(
        "System: You are a helpful assistant.\nUser: \nHello!\nFalcon:\nHi! How can I help?\nUser: \nWhat is 2+2?\nFalcon:\n",
        Load("falcon").Apply(Conversation));

    [Theory]
    [InlineData("{% macro greet() %}hi{% endmacro %}", "macro")]
    [InlineData("{% include 'other.jinja' %}", "include")]
    [InlineData("{{ messages | wordwrap }}", "filter 'wordwrap'")]
    [InlineData("{{ x is callable }}", "test 'is callable'")]
    [InlineData("{{ messages[0]", "never closed")]
    [InlineData("{% if true %}yes", "endif")]
    [InlineData("{% endfor %}", "endfor")]
    [InlineData("{{ 'unterminated }}", "unterminated string")]
    [InlineData("{{ 2 ** 3 }}", "'**'")]
    public void UnsupportedOrBrokenSyntaxIsRejectedWhenParsing(string template, string mentioned)
    {
        var ex = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse(template, null, null));
        Assert.Contains(mentioned, ex.Message);
        Assert.False(ex.Raised);
    }

    [Fact]
    public void RuntimeErrorsNameTheLineAndTheProblem()
    {
        var ex = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse("ok\n{{ nothing.field }}", null, null).Apply([]));
        Assert.Contains("line 2", ex.Message);
        Assert.Contains("'nothing' is undefined", ex.Message);
        ex = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse("{{ foo() }}", null, null).Apply([]));
        Assert.Contains("unsupported function 'foo()'", ex.Message);
        ex = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse("{{ 'a' + 1 }}", null, null).Apply([]));
        Assert.Contains("str and int", ex.Message);
    }

    [Theory]
    [InlineData("{{ messages[0]['role'] }}|{{ messages[-1].content }}", "system|What is 2+2?")]
    [InlineData("{% for m in messages[1:] %}{{ loop.index0 }}{{ m.role[:1] }}{% if not loop.last %},{% endif %}{% endfor %}", "0u,1a,2u")]
    [InlineData("{% for m in messages %}{% if loop.first %}F{% endif %}{{ loop.index }}/{{ loop.length }} {% endfor %}", "F1/4 2/4 3/4 4/4 ")]
    [InlineData("{{ '  pad  ' | trim }}|{{ 'Ab' | upper }}{{ 'Ab' | lower }}|{{ messages | length }}", "pad|ABab|4")]
    [InlineData("{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.n = ns.n + 1 %}{% endif %}{% endfor %}{{ ns.n }}", "2")]
    [InlineData("{% set x = 1 %}{% for m in messages %}{% set x = 5 %}{% endfor %}{{ x }}", "1")]
    [InlineData("{{ 'sys' in messages[0].content }} {{ 'help' in messages[0].content }} {{ 'role' in messages[0] }} {{ 'x' not in 'abc' }}", "False True True True")]
    [InlineData("{{ bos_token ~ 1 ~ none }}{{ undefined_name }}|{{ x is defined }}{{ bos_token is string }}{{ none is none }}", "<s>1None|FalseTrueTrue")]
    [InlineData("{{ {'a': [1, 'b', true, none]} | tojson }}", "{\"a\": [1, \"b\", true, null]}")]
    [InlineData("{{ {'a': 1} | tojson(indent=2) }}", "{\n  \"a\": 1\n}")]
    [InlineData("{{ 'abcdef'[1:-1] }}{{ 'abcdef'[::-2] }}{{ [1,2,3][-2] }}", "bcdefdb2")]
    [InlineData("{{ 7 // 2 }} {{ -7 % 3 }} {{ 1 if 2 > 3 else 4 }} {{ 3 == 3.0 }} {{ not false and (true or false) }}", "3 2 4 True True")]
    [InlineData("a  \n  {%- if true -%}  \n b {% endif %}\n  {{- ' c' }}", "ab  c")]
    [InlineData("{% for k, v in {'x': 1, 'y': 2} | items %}{{ k }}={{ v }};{% endfor %}{{ ['a','b'] | join('-') }}", "x=1;y=2;a-b")]
    [InlineData("{{ ['a','code','b'] | reject('equalto', 'code') | join(',') }}{{ messages | selectattr('role', 'equalto', 'user') | list | length }}", "a,b2")]
    [InlineData("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}", "02")]
    [InlineData("{{ ' Hi '.strip() }}{{ 'a,b'.split(',')[1] }}{{ 'x'.startswith('x') }}{# a comment #}", "HibTrue")]
    public void JinjaSemantics(string template, string expected) =>
        Assert.Equal(expected, ChatTemplate.Parse(template, "<s>", "</s>").Apply(Conversation));

    [Fact]
    public void TryLoadReadsListTemplatesTokenObjectsAndMissingTemplates()
    {
        string dir = Path.Combine(Path.GetTempPath(), "petals-chat-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            string config = Path.Combine(dir, "tokenizer_config.json");
            Assert.Null(ChatTemplate.TryLoad(dir));
            File.WriteAllText(config, """{"bos_token": "<s>"}""");
            Assert.Null(ChatTemplate.TryLoad(dir));
            File.WriteAllText(config, """
                {"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>",
                 "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}]}
                """);
            var t = ChatTemplate.TryLoad(dir)!;
            Assert.Equal("<s>hi</s>", t.Apply([new("user", "hi")]));
            File.WriteAllText(config, """{"chat_template": [{"name": "rag", "template": "T"}]}""");
            Assert.Contains("default", Assert.Throws<ChatTemplateException>(() => ChatTemplate.TryLoad(dir)).Message);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
