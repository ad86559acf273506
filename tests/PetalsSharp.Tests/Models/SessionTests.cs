using PetalsSharp.Models;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models;

/// <summary>KV-cache sessions: rollback and beam reorder give what a fresh computation gives.</summary>
public sealed class SessionTests : IClassFixture<GenerationModel>
{
    readonly CausalLM _lm;

    public SessionTests(GenerationModel m) => _lm = m.Lm;

    Tensor Embed(params long[][] rows) =>
        _lm.Ends.Embed(tensor(rows.SelectMany(r => r).ToArray(), [rows.Length, rows[0].Length]));

    [Fact]
    public async Task Rolling_back_overwrites_the_cache_from_that_position()
    {
        using var scope = NewDisposeScope();
        using var fresh = _lm.Blocks.OpenSession(new SessionOptions(1, 16));
        var expected = await fresh.StepAsync(Embed([1, 2, 3, 9, 8]));
        using var session = _lm.Blocks.OpenSession(new SessionOptions(1, 16));
        await session.StepAsync(Embed([1, 2, 3, 4, 5, 6]));
        var rolled = await session.StepAsync(Embed([9, 8]), new StepOptions(StartFromPosition: 3));
        Assert.Equal(5, session.Position);
        TensorAssert.Close(expected.narrow(1, 3, 2), rolled, 1e-5, 1e-5, "after rollback");
    }

    [Fact]
    public async Task Hypo_ids_reorder_the_cache_rows()
    {
        using var scope = NewDisposeScope();
        using var fresh = _lm.Blocks.OpenSession(new SessionOptions(2, 16));
        var expected = await fresh.StepAsync(Embed([4, 5, 6, 7], [4, 5, 6, 7]));
        using var session = _lm.Blocks.OpenSession(new SessionOptions(2, 16));
        await session.StepAsync(Embed([1, 2, 3], [4, 5, 6]));
        var step = await session.StepAsync(Embed([7], [7]), new StepOptions(HypoIds: tensor(new long[] { 1, 1 })));
        TensorAssert.Close(expected.narrow(1, 3, 1), step, 1e-5, 1e-5, "after reorder");
    }

    [Fact]
    public async Task Session_rejects_bad_steps_and_stays_usable()
    {
        using var scope = NewDisposeScope();
        using var session = _lm.Blocks.OpenSession(new SessionOptions(1, 4));
        await Assert.ThrowsAsync<ArgumentException>(async () => await session.StepAsync(zeros(1, 2, 7)));
        await Assert.ThrowsAsync<ArgumentException>(async () => await session.StepAsync(Embed([1, 2], [3, 4])));
        await Assert.ThrowsAsync<ArgumentException>(async () => await session.StepAsync(Embed([1, 2, 3, 4, 5])));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () => await session.StepAsync(Embed([1]), new StepOptions(StartFromPosition: 2)));
        await session.StepAsync(Embed([1, 2, 3]));
        Assert.Equal(3, session.Position);
    }
}

/// <summary>The llama-gqa fixture model, shared by a test class.</summary>
public sealed class GenerationModel : IDisposable
{
    public CausalLM Lm { get; } = CausalLM.Load(TestData.Path("llama-gqa"));
    public void Dispose() => Lm.Dispose();
}
