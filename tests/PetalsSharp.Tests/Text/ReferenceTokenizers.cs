using System.Collections.Concurrent;
using System.Text.Json.Nodes;
using PetalsSharp.Text.Tokenizers;
using HfTokenizer = global::Tokenizers.DotNet.Tokenizer;

namespace PetalsSharp.Tests.Text;

/// <summary>
/// The byte-level tokenizer folders checked against HF <c>tokenizers</c>: <see cref="Gpt2TokenizerFiles"/> at a few
/// vocabulary sizes, and Qwen2- and Llama-3-style files built on GPT-2's vocabulary with their Split regexes. Each
/// folder is loaded once by both implementations and shared by the tests of a class (loading is a good part of their time).
/// </summary>
public sealed class ReferenceTokenizers : IDisposable
{
    /// <summary>Names of the folders <see cref="Dir"/> knows, in the order they are written.</summary>
    public static readonly string[] Names =
        ["gpt2-300", "gpt2-1000", "gpt2-32000", "gpt2-50257", "qwen2-style", "llama3-style", "mistral-style", "metaspace-split"];

    private const string QwenPattern =
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    private const string Llama3Pattern =
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    private readonly string _root = TempDir.Create();
    private readonly ConcurrentDictionary<string, Lazy<(HfTokenizer Hf, ITextTokenizer Ours)>> _loaded = new();

    public ReferenceTokenizers()
    {
        foreach (int size in new[] { 300, 1000, 32000, 50257 })
        {
            Gpt2TokenizerFiles.Write(Dir($"gpt2-{size}"), size);
        }

        string gpt2 = Path.Combine(Dir("gpt2-50257"), TokenizerLoader.HfJsonFileName);
        WriteQwen2(gpt2, Dir("qwen2-style"));
        WriteLlama3(gpt2, Dir("llama3-style"));
        if (Fixtures.Stories260KDir is { } stories)
        {
            string sentencePiece = Path.Combine(stories, TokenizerLoader.HfJsonFileName);
            WriteMistral(sentencePiece, Dir("mistral-style"));
            WriteMetaspaceSplit(sentencePiece, Dir("metaspace-split"));
        }
    }

    /// <summary>The folder of the tokenizer called <paramref name="name"/>.</summary>
    public string Dir(string name) => Path.Combine(_root, name);

    /// <summary>The tokenizer in <paramref name="dir"/> as HF <c>tokenizers</c> and as our reader load it.</summary>
    public (HfTokenizer Hf, ITextTokenizer Ours) Load(string dir) =>
        _loaded.GetOrAdd(dir, d => new(() => (new HfTokenizer(Path.Combine(d, TokenizerLoader.HfJsonFileName)), TokenizerLoader.Load(d))))
            .Value;

    public void Dispose()
    {
        foreach (var pair in _loaded.Values.Where(l => l.IsValueCreated))
        {
            pair.Value.Hf.Dispose();
        }

        Directory.Delete(_root, recursive: true);
    }

    /// <summary>Qwen2's layout: NFC, its Split regex (single digits) then ByteLevel without regex, no BOS, ChatML specials.</summary>
    private static void WriteQwen2(string gpt2Json, string dir)
    {
        var root = ByteLevelBase(gpt2Json, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]);
        root["normalizer"] = new JsonObject { ["type"] = "NFC" };
        root["pre_tokenizer"] = SplitThenByteLevel(QwenPattern, trimOffsets: false);
        root["post_processor"] = ByteLevel(addPrefixSpace: false, trimOffsets: false, useRegex: false);
        root["decoder"] = ByteLevel(addPrefixSpace: false, trimOffsets: false, useRegex: false);
        root["model"]!["continuing_subword_prefix"] = "";
        root["model"]!["end_of_word_suffix"] = "";
        Save(root, dir, new JsonObject
        {
            ["add_prefix_space"] = false, ["bos_token"] = null, ["eos_token"] = "<|im_end|>", ["pad_token"] = "<|endoftext|>",
            ["tokenizer_class"] = "Qwen2Tokenizer",
        });
    }

    /// <summary>Llama 3's layout: its Split regex (digit groups of three), ignore_merges, and BOS from a TemplateProcessing.</summary>
    private static void WriteLlama3(string gpt2Json, string dir)
    {
        var root = ByteLevelBase(
            gpt2Json, ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]);
        root["normalizer"] = null;
        root["pre_tokenizer"] = SplitThenByteLevel(Llama3Pattern, trimOffsets: true);
        root["post_processor"] = new JsonObject
        {
            ["type"] = "Sequence",
            ["processors"] = new JsonArray(
                ByteLevel(addPrefixSpace: true, trimOffsets: false, useRegex: true),
                new JsonObject
                {
                    ["type"] = "TemplateProcessing",
                    ["single"] = new JsonArray(Special("<|begin_of_text|>", 0), Sequence("A", 0)),
                    ["pair"] = new JsonArray(
                        Special("<|begin_of_text|>", 0), Sequence("A", 0), Special("<|begin_of_text|>", 1), Sequence("B", 1)),
                    ["special_tokens"] = new JsonObject
                    {
                        ["<|begin_of_text|>"] = new JsonObject
                        {
                            ["id"] = "<|begin_of_text|>", ["ids"] = new JsonArray(50256), ["tokens"] = new JsonArray("<|begin_of_text|>"),
                        },
                    },
                }),
        };
        root["decoder"] = ByteLevel(addPrefixSpace: true, trimOffsets: true, useRegex: true);
        root["model"]!["ignore_merges"] = true;
        Save(root, dir, new JsonObject
        {
            ["bos_token"] = "<|begin_of_text|>", ["eos_token"] = "<|end_of_text|>", ["tokenizer_class"] = "PreTrainedTokenizerFast",
        });
    }

    /// <summary>
    /// Mistral's <c>legacy: false</c> layout on stories260K's SentencePiece BPE (byte fallback): no normalizer, a Metaspace
    /// pre-tokenizer that prepends ▁ only at the start of the input (<c>prepend_scheme: first</c>, no split), the
    /// Replace/ByteFallback/Fuse/Strip decoder, BOS from a TemplateProcessing, and [INST] [/INST] as added tokens.
    /// </summary>
    private static void WriteMistral(string sentencePieceJson, string dir)
    {
        var root = JsonNode.Parse(File.ReadAllText(sentencePieceJson))!;
        AddSpecials(root, 512, ["[INST]", "[/INST]"]);
        root["normalizer"] = null;
        root["pre_tokenizer"] = new JsonObject
        {
            ["type"] = "Metaspace", ["replacement"] = "\u2581", ["prepend_scheme"] = "first", ["split"] = false,
        };
        Save(root, dir, new JsonObject
        {
            ["add_bos_token"] = true, ["bos_token"] = "<s>", ["eos_token"] = "</s>", ["legacy"] = false, ["tokenizer_class"] = "LlamaTokenizer",
        });
    }

    /// <summary>Metaspace the older way: a prefix on every piece (<c>always</c>), split at every ▁, and its own decoder.</summary>
    private static void WriteMetaspaceSplit(string sentencePieceJson, string dir)
    {
        var root = JsonNode.Parse(File.ReadAllText(sentencePieceJson))!;
        AddSpecials(root, 512, ["[INST]", "[/INST]"]);
        root["normalizer"] = null;
        root["pre_tokenizer"] = new JsonObject
        {
            ["type"] = "Metaspace", ["replacement"] = "\u2581", ["prepend_scheme"] = "always", ["split"] = true,
        };
        root["decoder"] = new JsonObject
        {
            ["type"] = "Metaspace", ["replacement"] = "\u2581", ["prepend_scheme"] = "always", ["split"] = true,
        };
        Save(root, dir, new JsonObject { ["bos_token"] = "<s>", ["eos_token"] = "</s>" });
    }

    /// <summary>Appends <paramref name="specials"/> to the added tokens, with ids from <paramref name="firstId"/> on.</summary>
    private static void AddSpecials(JsonNode root, int firstId, string[] specials)
    {
        var added = root["added_tokens"]!.AsArray();
        for (int i = 0; i < specials.Length; i++)
        {
            added.Add(new JsonObject
            {
                ["id"] = firstId + i, ["content"] = specials[i], ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false,
                ["normalized"] = false, ["special"] = true,
            });
        }
    }

    /// <summary>GPT-2's 50256 ordinary tokens with <paramref name="specials"/> as added tokens from id 50256 on.</summary>
    private static JsonNode ByteLevelBase(string gpt2Json, string[] specials)
    {
        var root = JsonNode.Parse(File.ReadAllText(gpt2Json))!;
        var added = new JsonArray();
        for (int i = 0; i < specials.Length; i++)
        {
            added.Add(new JsonObject
            {
                ["id"] = 50256 + i, ["content"] = specials[i], ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false,
                ["normalized"] = false, ["special"] = true,
            });
        }

        root["added_tokens"] = added;
        return root;
    }

    private static JsonObject Special(string id, int typeId) =>
        new() { ["SpecialToken"] = new JsonObject { ["id"] = id, ["type_id"] = typeId } };

    private static JsonObject Sequence(string id, int typeId) =>
        new() { ["Sequence"] = new JsonObject { ["id"] = id, ["type_id"] = typeId } };

    private static JsonObject SplitThenByteLevel(string pattern, bool trimOffsets) => new()
    {
        ["type"] = "Sequence",
        ["pretokenizers"] = new JsonArray(
            new JsonObject
            {
                ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = pattern }, ["behavior"] = "Isolated", ["invert"] = false,
            },
            ByteLevel(addPrefixSpace: false, trimOffsets, useRegex: false)),
    };

    private static JsonObject ByteLevel(bool addPrefixSpace, bool trimOffsets, bool useRegex) => new()
    {
        ["type"] = "ByteLevel", ["add_prefix_space"] = addPrefixSpace, ["trim_offsets"] = trimOffsets, ["use_regex"] = useRegex,
    };

    private static void Save(JsonNode root, string dir, JsonObject config)
    {
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, TokenizerLoader.HfJsonFileName), root.ToJsonString());
        File.WriteAllText(Path.Combine(dir, TokenizerLoader.ConfigFileName), config.ToJsonString());
    }
}
