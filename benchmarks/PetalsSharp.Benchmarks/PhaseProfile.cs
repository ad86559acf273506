using PetalsSharp.Models;
using PetalsSharp.Models.Kernels;
using static TorchSharp.torch;

namespace PetalsSharp.Benchmarks;

/// <summary>
/// Where a fused decode step's time goes, phase by phase, as the caller (worker 0 of the team) sees it: its work
/// between barriers and its waits at them, summed over the blocks (phase k of every block) and averaged per step.
/// </summary>
public static class PhaseProfile
{
    static readonly string[] LlamaPhases = ["input norm", "q/k/v proj", "rotary + append", "attention", "o proj + residual",
        "post norm", "gate/up + silu", "down + residual"];

    public static void Print(LocalBlockStack stack, ScalarType dtype, int steps = 30, int batch = 1)
    {
        FusedStep.OneRunPerStep = true;
        using var session = (LocalBlockSession)stack.OpenSession(new SessionOptions(batch, 300));
        using (var scope = NewDisposeScope()) session.Step(randn(batch, 64, stack.Config.HiddenSize));   // a 64-token past
        var x = randn(batch, 1, stack.Config.HiddenSize);                                        // [B, 1, H]
        void Step(int i)
        {
            using var scope = NewDisposeScope();
            session.Step(x, new StepOptions(StartFromPosition: 64 + i % 50));
        }
        for (int i = 0; i < 5; i++) Step(i);
        var profile = new TeamProfile();
        var team = WorkerTeam.Shared;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        team.Profile = profile;
        try
        {
            for (int i = 0; i < steps; i++) Step(i);
        }
        finally
        {
            team.Profile = null;
        }
        double stepMs = sw.Elapsed.TotalMilliseconds / steps;
        int blocks = stack.Blocks.Count, perBlock = Math.Max(1, (profile.Phases + 1) / blocks);
        Console.WriteLine($"|   phases ({dtype}), {batch} row(s), per step of {stepMs:F2} ms ({profile.Jobs / steps} team run(s) per step, {profile.Phases} phases): worker 0's work / wait, ms |");
        var names = perBlock == LlamaPhases.Length ? LlamaPhases : Enumerable.Range(0, perBlock).Select(k => $"phase {k}").ToArray();
        double work = 0, wait = 0;
        for (int p = 0; p < perBlock; p++)
        {
            double pw = 0, pt = 0;
            for (int k = p; k < Math.Min(profile.Phases, TeamProfile.MaxPhases); k += perBlock)
            {
                pw += profile.WorkSeconds(k);
                pt += profile.WaitSeconds(k);
            }
            work += pw;
            wait += pt;
            Console.WriteLine($"|     {names[p]} | {pw * 1000 / steps:F3} / {pt * 1000 / steps:F3} |");
        }
        Console.WriteLine($"|     all phases | {work * 1000 / steps:F3} / {wait * 1000 / steps:F3} (outside team runs: {stepMs - (work + wait) * 1000 / steps:F3}) |");
    }
}
