using static TorchSharp.torch;

namespace PetalsSharp.Models;

/// <summary>
/// The argument checks every block stack and session makes, local or remote, so both refuse the same inputs with the
/// same messages before any compute or network call.
/// </summary>
internal static class StepChecks
{
    /// <summary>Hidden states must be floating point <c>[batch, seq, hidden]</c>.</summary>
    public static void Hidden(Tensor hidden, ModelConfig config)
    {
        if (hidden.dim() != 3 || hidden.shape[2] != config.HiddenSize)
            throw new ArgumentException($"hidden states must be [batch, seq, {config.HiddenSize}], got [{string.Join(", ", hidden.shape)}]");
        if (!hidden.is_floating_point())
            throw new ArgumentException($"hidden states must be floating point, got {hidden.dtype}");
    }

    /// <summary>A session needs at least one row and one position.</summary>
    public static void Session(SessionOptions options)
    {
        if (options.Batch <= 0) throw new ArgumentOutOfRangeException(nameof(options), "batch must be positive");
        if (options.MaxLength <= 0) throw new ArgumentOutOfRangeException(nameof(options), "max length must be positive");
    }

    /// <summary>
    /// Checks one step of a session at <paramref name="position"/> and returns where its tokens are written: the
    /// step's start_from_position (a rollback, never past the position) or the position itself.
    /// </summary>
    public static int Step(Tensor hidden, StepOptions? options, SessionOptions session, int position, ModelConfig config)
    {
        Hidden(hidden, config);                                                     // [B, T, H]
        if (hidden.shape[0] != session.Batch)
            throw new ArgumentException($"step has {hidden.shape[0]} rows, the session was opened for {session.Batch}");
        var start = options?.StartFromPosition ?? position;
        if (start < 0 || start > position)
            throw new ArgumentOutOfRangeException(nameof(options), $"start_from_position {start} is outside [0, {position}]");
        if (start + hidden.shape[1] > session.MaxLength)
            throw new ArgumentException($"session max length {session.MaxLength} exceeded: {start} + {hidden.shape[1]} tokens");
        return start;
    }
}
