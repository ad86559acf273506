namespace PetalsSharp.Training;

/// <summary>How the learning rate moves over a run after the warmup (the names of HF's <c>get_scheduler</c>).</summary>
public enum LrSchedule
{
    Constant,
    Linear,
    Cosine,
}

/// <summary>
/// The learning rate of each step, as HF's schedulers give it (<c>get_constant_schedule_with_warmup</c>,
/// <c>get_linear_schedule_with_warmup</c>, <c>get_cosine_schedule_with_warmup</c>): a linear warmup from 0 over
/// <c>warmup</c> steps, then constant, linear decay to 0, or a half cosine to 0 at the last step. Like HF, optimizer
/// step s (1-based) uses the factor at scheduler step s − 1, so a warmup's first step has rate 0.
/// </summary>
public static class LearningRateSchedule
{
    public static double At(int step, int steps, int warmup, LrSchedule schedule, double baseRate)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(step, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(warmup);
        int current = step - 1;
        if (current < warmup) return baseRate * current / Math.Max(1, warmup);
        double progress = (double)(current - warmup) / Math.Max(1, steps - warmup);
        return baseRate * schedule switch
        {
            LrSchedule.Constant => 1.0,
            LrSchedule.Linear => Math.Max(0.0, 1.0 - progress),
            LrSchedule.Cosine => Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * progress))),
            _ => throw new ArgumentOutOfRangeException(nameof(schedule)),
        };
    }

    public static LrSchedule Parse(string text) => text.ToLowerInvariant() switch
    {
        "constant" => LrSchedule.Constant,
        "linear" => LrSchedule.Linear,
        "cosine" => LrSchedule.Cosine,
        _ => throw new ArgumentException($"unknown learning-rate schedule '{text}' (constant, linear or cosine)"),
    };
}
