using System.Text.RegularExpressions;

namespace PetalsSharp.Hub;

/// <summary>A Hugging Face Hub model: <c>ORG/NAME</c> at a revision (branch, tag or commit; default <c>main</c>).</summary>
public sealed partial record HubModelId(string Repo, string Revision = HubModelId.DefaultRevision)
{
    public const string DefaultRevision = "main";

    /// <summary>The part after the slash: how the swarm names the model, as a local folder of that name would be.</summary>
    public string Name => Repo[(Repo.IndexOf('/') + 1)..];

    /// <summary>The cache folder name: <c>models--ORG--NAME</c>.</summary>
    public string CacheFolderName => "models--" + Repo.Replace("/", "--");

    public override string ToString() => Revision == DefaultRevision ? Repo : $"{Repo}@{Revision}";

    /// <summary>
    /// Parses <c>ORG/NAME[@REVISION]</c>. Names follow the hub's rules (letters, digits, '-', '_', '.'; no '..' or
    /// leading '.'), so a value that could be a relative path like <c>./x</c> or <c>../x/y</c> is not an id.
    /// </summary>
    public static bool TryParse(string? text, out HubModelId id)
    {
        id = null!;
        if (string.IsNullOrWhiteSpace(text)) return false;
        var m = IdPattern().Match(text);
        if (!m.Success || text.Contains("..", StringComparison.Ordinal)) return false;
        string revision = m.Groups["rev"].Success ? m.Groups["rev"].Value : DefaultRevision;
        if (revision.StartsWith('/') || revision.EndsWith('/') || revision.Contains("//", StringComparison.Ordinal)) return false;
        id = new HubModelId(m.Groups["org"].Value + "/" + m.Groups["name"].Value, revision);
        return true;
    }

    /// <summary>True when <paramref name="revision"/> is a full commit hash (a snapshot folder name).</summary>
    public static bool IsCommitHash(string revision) => CommitPattern().IsMatch(revision);

    [GeneratedRegex(@"^(?<org>[A-Za-z0-9][A-Za-z0-9_.-]{0,95})/(?<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,95})(@(?<rev>[A-Za-z0-9_./-]{1,200}))?$")]
    private static partial Regex IdPattern();

    [GeneratedRegex("^[0-9a-f]{40}$")]
    private static partial Regex CommitPattern();
}
