namespace PetalsSharp.Models.Weights;

/// <summary>
/// A checkpoint file or directory cannot be read: missing or malformed file, missing tensor,
/// wrong shape or unsupported dtype. The message always names the file (and the tensor when one is involved),
/// because an operator faced with a sharded multi-gigabyte checkpoint needs to know which file to fix.
/// </summary>
public sealed class CheckpointException : Exception
{
    /// <summary>Creates the exception.</summary>
    /// <param name="path">The file (or directory) the problem was found in.</param>
    /// <param name="message">The full message; it should already name <paramref name="path"/>.</param>
    /// <param name="tensorName">The tensor involved, if any.</param>
    /// <param name="inner">The underlying error, if any.</param>
    public CheckpointException(string path, string message, string? tensorName = null, Exception? inner = null)
        : base(message, inner)
    {
        Path = path;
        TensorName = tensorName;
    }

    /// <summary>The file or directory the problem was found in.</summary>
    public string Path { get; }

    /// <summary>The tensor involved, or null when the problem concerns the whole file.</summary>
    public string? TensorName { get; }
}
