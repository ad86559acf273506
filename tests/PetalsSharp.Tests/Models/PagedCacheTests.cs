using PetalsSharp.Models;
using PetalsSharp.Models.Kernels;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// The paged KV cache: pages come from a shared pool as rows grow and go back on rollback and dispose; rollback and
/// beam reorder work across page boundaries, on the cache alone and through whole sessions on both paths.
/// </summary>
public sealed class PagedCacheTests
{
    const int KvHeads = 2, HeadDim = 4, P = LayerCache.PageTokens;

    static KvPagePool Pool() => new(KvHeads * HeadDim);

    static Tensor Rand(int batch, int tokens) => randn(batch, KvHeads, tokens, HeadDim);   // [B, kvH, T, D]

    [Fact]
    public void Pages_come_as_rows_grow_and_go_back_on_rollback()
    {
        using var scope = NewDisposeScope();
        using var pool = Pool();
        manual_seed(1);
        var (k1, v1, k2, v2, k3, v3) = (Rand(2, 20), Rand(2, 20), Rand(2, 13), Rand(2, 13), Rand(2, 10), Rand(2, 10));
        using (var cache = new LayerCache(2, 50, KvHeads, HeadDim, ScalarType.Float32, pool))
        {
            Assert.Equal(0, cache.PagesHeld);                                   // opening takes nothing
            var (keys, values) = cache.Append(k1, v1, 0);                       // [B, kvH, 20, D]
            TensorAssert.Close(k1, keys, 0, 0, "keys as written");
            TensorAssert.Close(v1, values, 0, 0, "values as written");
            Assert.Equal(2 * 2, cache.PagesHeld);
            cache.Append(k2, v2, 20);                                            // 33 tokens: 3 pages a row
            Assert.Equal(2 * 3, pool.PagesInUse);
            TensorAssert.Close(cat([k1, k2], 2), cache.Read(33).Keys, 0, 0, "keys across three pages");

            cache.Truncate(17);                                                  // back into page 1: page 2 goes
            Assert.Equal(2 * 2, pool.PagesInUse);
            cache.Append(k3, v3, 17);                                            // regrows into a recycled page
            var (rk, rv) = cache.Read(27);
            TensorAssert.Close(cat([k1.narrow(2, 0, 17), k3], 2), rk, 0, 0, "keys after the rollback");
            TensorAssert.Close(cat([v1.narrow(2, 0, 17), v3], 2), rv, 0, 0, "values after the rollback");
            Assert.Equal(2 * 3 * pool.PageBytes, pool.AllocatedBytes);         // the pool reused what came back
            pool.TrimFree();                                                     // frees the 2 free pages, not the 4 in use
            Assert.Equal(2 * 2 * pool.PageBytes, pool.AllocatedBytes);
            TensorAssert.Close(k1.narrow(2, 0, 17), cache.Read(17).Keys, 0, 0, "pages in use survive a trim");
        }
        Assert.Equal(0, pool.PagesInUse);
        pool.TrimFree();
        Assert.Equal(0, pool.AllocatedBytes);
        Assert.Equal(2 * 3 * pool.PageBytes, pool.PeakBytes);
    }

    [Fact]
    public void A_beam_reorder_moves_whole_rows_across_pages_and_refuses_bad_ids()
    {
        using var scope = NewDisposeScope();
        manual_seed(2);
        using var cache = new LayerCache(3, 48, KvHeads, HeadDim);
        var (k, v) = (Rand(3, 40), Rand(3, 40));                                 // 3 pages a row
        cache.Append(k, v, 0);
        var order = tensor(new long[] { 2, 0, 0 });
        cache.Reorder(order);
        var (keys, values) = cache.Read(40);
        TensorAssert.Close(k.index_select(0, order), keys, 0, 0, "reordered keys");
        TensorAssert.Close(v.index_select(0, order), values, 0, 0, "reordered values");

        Assert.Throws<ArgumentException>(() => cache.Reorder(tensor(new long[] { 3, 0, 0 })));
        Assert.Throws<ArgumentException>(() => cache.Reorder(tensor(new long[] { -1, 0, 0 })));
        Assert.Throws<ArgumentException>(() => cache.Reorder(tensor(new long[] { 0, 1 })));
        TensorAssert.Close(k.index_select(0, order), cache.Read(40).Keys, 0, 0, "a refused reorder changes nothing");
    }

    sealed class Limit(int pages) : IKvAccount
    {
        public int Held { get; private set; }
        public void Take(int more)
        {
            if (Held + more > pages) throw new InvalidOperationException("full");
            Held += more;
        }
        public void Give(int fewer) => Held -= fewer;
    }

    [Fact]
    public void A_refusing_account_leaves_the_cache_as_it_was_and_gets_everything_back()
    {
        using var scope = NewDisposeScope();
        using var pool = Pool();
        var account = new Limit(5);
        using (var cache = new LayerCache(2, 64, KvHeads, HeadDim, ScalarType.Float32, pool, account))
        {
            cache.EnsureLength(2 * P);                                           // 2 pages × 2 rows
            Assert.Throws<InvalidOperationException>(() => cache.EnsureLength(3 * P));   // 2 more would make 6
            Assert.Equal((4, 4, 2 * P), (account.Held, cache.PagesHeld, cache.Room));
            Assert.Equal(4, pool.PagesInUse);
            Assert.Throws<InvalidOperationException>(() => cache.EnsureLength(65));     // past max_length
        }
        Assert.Equal((0, 0L), (account.Held, pool.PagesInUse));
    }

    [Fact]
    public void Recycled_pages_never_show_another_sessions_keys()
    {
        using var scope = NewDisposeScope();
        using var pool = Pool();
        using (var first = new LayerCache(1, 16, KvHeads, HeadDim, ScalarType.Float32, pool))
            first.Append(Rand(1, 16), Rand(1, 16), 0);
        using var second = new LayerCache(1, 16, KvHeads, HeadDim, ScalarType.Float32, pool);
        second.EnsureLength(1);
        Assert.Equal(pool.PageBytes, pool.AllocatedBytes);                       // the same page
        Assert.Equal(0f, second.Read(16).Keys.abs().max().item<float>());
    }

    /// <summary>Steps 0..n of <paramref name="x"/> <c>[B, n, H]</c> through a session in the given chunks.</summary>
    static Tensor Run(LocalBlockSession session, Tensor x, int start, params int[] chunks)
    {
        var outputs = new List<Tensor>();
        foreach (var n in chunks)
        {
            outputs.Add(session.Step(x.narrow(1, start, n), start < session.Position ? new StepOptions(StartFromPosition: start) : null));
            start += n;
        }
        return cat(outputs, 1);
    }

    [Theory]
    [InlineData("llama-gqa")]
    [InlineData("falcon-new")]
    [InlineData("bloom")]
    [InlineData("qwen2")]
    public void A_rollback_across_a_page_boundary_matches_a_session_that_never_went_there(string fixture)
    {
        using var ckpt = Checkpoint.Open(TestData.Path(fixture));
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers, ScalarType.Float32);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        manual_seed(3);
        var x = randn(2, 40, stack.Config.HiddenSize);                          // [B, 40, H]
        var y = randn(2, 40, stack.Config.HiddenSize);                          // [B, 40, H]: the tokens after the rollback
        using var rolled = (LocalBlockSession)stack.OpenSession(new SessionOptions(2, 48));
        using var straight = (LocalBlockSession)stack.OpenSession(new SessionOptions(2, 48));
        Run(rolled, x, 0, 20, 1, 1, 14);                                         // 36 tokens: 3 pages
        Assert.Equal(2 * 3, rolled.Caches[0].PagesHeld);
        // Back to 14 (page 0), then a fused 2-token step, a reference 17-token step and a fused one across pages 1 and 2.
        var after = Run(rolled, cat([x.narrow(1, 0, 14), y.narrow(1, 14, 26)], 1), 14, 2, 17, 1);
        Assert.Equal(34, rolled.Position);
        Assert.Equal(2 * 3, rolled.Caches[0].PagesHeld);
        Run(straight, x, 0, 14);
        var expected = Run(straight, cat([x.narrow(1, 0, 14), y.narrow(1, 14, 26)], 1), 14, 2, 17, 1);
        TensorAssert.Close(expected, after, 1e-4, 1e-4, "after the rollback");   // the prefixes ran in different chunk shapes

        rolled.Step(y.narrow(1, 0, 3), new StepOptions(StartFromPosition: 5));  // a rollback into page 0 frees pages 1 and 2
        Assert.Equal(2 * 1, rolled.Caches[0].PagesHeld);
    }

    [Theory]
    [InlineData("llama-gqa")]
    [InlineData("mixtral")]
    [InlineData("bloom")]
    [InlineData("mistral")]
    public void A_beam_reorder_across_pages_matches_a_session_built_in_that_order(string fixture)
    {
        using var ckpt = Checkpoint.Open(TestData.Path(fixture));
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers, ScalarType.Float32);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        manual_seed(4);
        var x = randn(3, 18, stack.Config.HiddenSize);                          // [3, 18, H]: two pages a row
        var next = randn(3, 1, stack.Config.HiddenSize);                        // [3, 1, H]
        var order = tensor(new long[] { 2, 0, 1 });
        using var beams = (LocalBlockSession)stack.OpenSession(new SessionOptions(3, 24));
        using var ordered = (LocalBlockSession)stack.OpenSession(new SessionOptions(3, 24));
        beams.Step(x);
        ordered.Step(x.index_select(0, order));
        var fused = beams.Step(next, new StepOptions(HypoIds: order));           // 3 rows: the fused path
        TensorAssert.Close(ordered.Step(next), fused, 1e-5, 1e-5, "reordered beams");
        Assert.True(beams.FusedSteps > 0, "the reordered step ran fused");
        using (FusedDecode.Disable())
            TensorAssert.Close(ordered.Step(next, new StepOptions(HypoIds: tensor(new long[] { 1, 1, 0 }))),
                beams.Step(next, new StepOptions(HypoIds: tensor(new long[] { 1, 1, 0 }))), 1e-5, 1e-5, "a reference-path reorder");
    }

    [Fact]
    public void A_sliding_window_keeps_only_its_pages_and_decodes_as_the_full_forward()
    {
        var dir = Directory.CreateTempSubdirectory("petals-window").FullName;
        try
        {
            foreach (var file in Directory.GetFiles(TestData.Path("mixtral"))) File.Copy(file, Path.Combine(dir, Path.GetFileName(file)));
            var config = Path.Combine(dir, "config.json");
            File.WriteAllText(config, File.ReadAllText(config).Replace("\"sliding_window\": null", "\"sliding_window\": 20"));
            WindowedSessionKeepsItsPages(dir, window: 20, maxPages: 4);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>Mistral's window of 4: a session keeps at most three pages (the window, one page of slack, a straddle).</summary>
    [Fact]
    public void Mistral_keeps_only_its_window_too() => WindowedSessionKeepsItsPages(TestData.Path("mistral"), window: 4, maxPages: 3);

    static void WindowedSessionKeepsItsPages(string dir, int window, int maxPages)
    {
        using var ckpt = Checkpoint.Open(dir);
        Assert.Equal(window, ckpt.Config.AttentionWindow);
        using var stack = ckpt.LoadBlocks(0, ckpt.Config.NumLayers, ScalarType.Float32);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        manual_seed(6);
        var x = randn(1, 70, stack.Config.HiddenSize);                      // [1, 70, H]
        var full = stack.Forward(x);                                         // [1, 70, H], windowed mask
        using var session = (LocalBlockSession)stack.OpenSession(new SessionOptions(1, 80));
        var outputs = new List<Tensor> { session.Step(x.narrow(1, 0, 10)) };
        for (int t = 10; t < 70; t++)
        {
            outputs.Add(session.Step(x.narrow(1, t, 1)));                    // fused single-token steps
            Assert.True(session.Caches[0].PagesHeld <= maxPages, $"{session.Caches[0].PagesHeld} pages held at {t + 1} tokens");
        }
        TensorAssert.Close(full, cat(outputs, 1), 1e-4, 1e-4, "decoding with dropped pages");
        Assert.True(session.Caches[0].FirstKept > 0, "no page was dropped");

        int back = 70 - Math.Min(3, window - 1);
        var again = session.Step(x.narrow(1, back, 70 - back), new StepOptions(StartFromPosition: back));   // a short rollback works
        TensorAssert.Close(full.narrow(1, back, 70 - back), again, 1e-4, 1e-4, "after a short rollback");
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => session.Step(x.narrow(1, 10, 1), new StepOptions(StartFromPosition: 10)));
        Assert.Contains("sliding window", e.Message);
        Assert.Equal(70, session.Position);
    }
}
