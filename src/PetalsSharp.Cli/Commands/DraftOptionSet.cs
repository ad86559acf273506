using System.CommandLine;
using PetalsSharp.Generation;
using PetalsSharp.Models;

namespace PetalsSharp.Cli.Commands;

/// <summary>The speculative decoding options <c>petals generate</c> and <c>petals api</c> share.</summary>
internal sealed class DraftOptionSet
{
    public const string PromptLookup = "prompt-lookup";

    public Option<string> Draft { get; } = new("--draft")
    {
        Description = $"Speculative decoding with a free draft: '{PromptLookup}' copies what followed the last n-gram of the text",
    };

    public Option<string> DraftModel { get; } = new("--draft-model")
    {
        Description = "Speculative decoding with a small local draft model that has the same tokenizer (folder or ORG/NAME)",
    };

    public Option<int> DraftTokens { get; } = new("--draft-tokens")
    {
        Description = "Draft tokens per step to start with (k; it adapts to the acceptance rate)", DefaultValueFactory = _ => 4,
    };

    public void AddTo(Command cmd)
    {
        cmd.Options.Add(Draft);
        cmd.Options.Add(DraftModel);
        cmd.Options.Add(DraftTokens);
    }

    /// <summary>Checks the options; true when speculative decoding was asked for.</summary>
    public bool Requested(System.CommandLine.ParseResult pr)
    {
        var draft = pr.GetValue(Draft);
        if (draft is not null && draft != PromptLookup) throw new CliException($"--draft must be {PromptLookup} (or give --draft-model DIR)");
        if (draft is not null && pr.GetValue(DraftModel) is not null) throw new CliException("give --draft or --draft-model, not both");
        int k = pr.GetValue(DraftTokens);
        if (k < 1 || k > 8) throw new CliException($"--draft-tokens must be in [1, 8] (got {k})");
        return draft is not null || pr.GetValue(DraftModel) is not null;
    }

    /// <summary>The draft model, loaded here, checked against <paramref name="target"/>'s vocabulary; null without --draft-model.</summary>
    public async Task<CausalLM?> LoadModelAsync(System.CommandLine.ParseResult pr, CausalLM target, CancellationToken ct)
    {
        if (pr.GetValue(DraftModel) is not { } dir) return null;
        var lm = await ModelOpener.OpenAsync(dir, dtype: null, ct: ct);
        if (lm.Config.VocabSize != target.Config.VocabSize)
        {
            lm.Dispose();
            throw new CliException($"--draft-model has a vocabulary of {lm.Config.VocabSize} tokens, the model {target.Config.VocabSize}: a draft needs the same tokenizer");
        }
        return lm;
    }

    /// <summary>Speculative options over <paramref name="draftModel"/> (a fresh draft session) or prompt lookup.</summary>
    public SpeculativeOptions Options(System.CommandLine.ParseResult pr, CausalLM? draftModel) =>
        new(draftModel is null ? new PromptLookupDraft() : new Generation.DraftModel(draftModel), pr.GetValue(DraftTokens));
}
