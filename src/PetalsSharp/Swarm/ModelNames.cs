namespace PetalsSharp.Swarm;

/// <summary>How a model is named in the swarm; servers and clients derive the same names from the same folder.</summary>
public static class ModelNames
{
    /// <summary>Key of the DHT entry that lists served models (as in Petals).</summary>
    public const string ModelIndexKey = "_petals.models";

    /// <summary>A model's name: its folder's name.</summary>
    public static string FromFolder(string modelDir) =>
        Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(modelDir)));

    /// <summary>DHT prefix: '.' separates prefix and block index and ' ' separates keys, so both become '-'.</summary>
    public static string DhtPrefix(string modelName) => modelName.Replace('.', '-').Replace(' ', '-');

    /// <summary>The DHT key of one block.</summary>
    public static string BlockKey(string prefix, int block) => $"{prefix}.{block}";
}
