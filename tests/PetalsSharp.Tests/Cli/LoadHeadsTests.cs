using PetalsSharp.Cli.Commands;
using PetalsSharp.Models;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Cli;

/// <summary>
/// <c>petals load</c>'s shared client ends: rows of sessions that all handed theirs in go as one batch, each gets the
/// greedy token of its own row, and a session that leaves releases the others.
/// </summary>
public sealed class LoadHeadsTests
{
    [Fact]
    public async Task Rows_of_every_decoding_session_go_as_one_batch_and_a_leaving_session_releases_the_rest()
    {
        using var lm = CausalLM.Load(TestData.Path("llama-gqa"));
        // No dispose scope or no_grad here: both are per thread, and this test resumes on other threads after awaits
        // (a no_grad left open on a pool thread breaks the next test's backward there).
        manual_seed(9);
        var heads = new LoadHeads(lm.Ends);
        var window = LoadHeads.Window;
        LoadHeads.Window = TimeSpan.FromMinutes(5);   // only a full batch or a leaving session may release rows here
        try
        {
            await Run(lm, heads);
        }
        finally { LoadHeads.Window = window; }
    }

    static async Task Run(CausalLM lm, LoadHeads heads)
    {
        var rows = Enumerable.Range(0, 3).Select(_ => randn(1, lm.Config.HiddenSize)).ToArray();   // [1, H] each
        long Alone(Tensor row) => lm.Ends.Logits(lm.Ends.FinalNorm(row.unsqueeze(1))).squeeze(1).argmax(-1).item<long>();

        for (int i = 0; i < 3; i++) heads.Enter();
        var first = heads.NextAsync(rows[0]);
        var second = heads.NextAsync(rows[1]);
        Assert.False(first.IsCompleted);                          // the third session has not handed in yet
        var third = heads.NextAsync(rows[2]);
        Assert.Equal(rows.Select(Alone), [await first, await second, await third]);
        Assert.Equal((1L, 3L), heads.Batched);

        var waiting = heads.NextAsync(rows[0]);
        heads.Leave();
        heads.Leave();                                            // the others are done: nobody left to wait for
        Assert.Equal(Alone(rows[0]), await waiting);
        Assert.Equal((2L, 4L), heads.Batched);
    }
}
