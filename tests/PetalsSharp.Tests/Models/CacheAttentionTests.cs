using PetalsSharp.Models;
using PetalsSharp.Models.Kernels;
using Xunit;
using static TorchSharp.torch;
using Native = PetalsSharp.Models.Weights.NativeMemory;

namespace PetalsSharp.Tests.Models;

/// <summary>
/// The fused path's attention of one query head over the paged cache against a softmax written the plain way over
/// exactly the keys the query may see: those within the sliding window (itself included) and not left padding
/// (except itself), across page boundaries; with an ALiBi term, the same softmax over scores plus that term.
/// </summary>
public sealed unsafe class CacheAttentionTests
{
    const int Batch = 2, MaxLength = 2 * LayerCache.PageTokens + 8, KvHeads = 2, HeadDim = 8;

    nint[]? _keyTable, _valueTable;   // the page tables: fields, so they live as long as the test reads through them

    KvPages Over(Tensor keys, Tensor values) => KvPages.OverContiguous(Native.Pointer<float>(keys), Native.Pointer<float>(values),
        Batch, MaxLength, KvHeads, HeadDim, out _keyTable, out _valueTable);

    [Theory]
    [InlineData(null, 0)]
    [InlineData(null, 3)]
    [InlineData(4, 0)]
    [InlineData(4, 3)]
    [InlineData(1, 0)]
    [InlineData(20, 2)]
    public void A_query_sees_its_window_of_keys_past_the_padding(int? window, int pad)
    {
        using var scope = NewDisposeScope();
        manual_seed(3);
        var keys = randn(Batch, MaxLength, KvHeads, HeadDim);                  // [B, max, kvH, D]: token-major, as KvPages reads it
        var values = randn(Batch, MaxLength, KvHeads, HeadDim);                // [B, max, kvH, D]
        var cache = Over(keys, values);
        var scores = new float[MaxLength];
        var output = new float[HeadDim];
        const int row = 1, kvHead = 1;
        foreach (int qpos in new[] { 0, 2, 3, 5, LayerCache.PageTokens + 1, MaxLength - 1 })
        {
            var q = randn(HeadDim);                                            // [D]
            fixed (float* s = scores, o = output)
                CacheAttention.Query(Native.Pointer<float>(q), cache, row, kvHead, qpos, pad, window, s, o);

            int lo = window is { } w ? Math.Max(0, qpos - w + 1) : 0;
            var visible = Enumerable.Range(lo, qpos - lo + 1).Where(j => j >= pad || j == qpos).Select(j => (long)j).ToArray();
            var index = tensor(visible);                                       // [n]
            var k = keys[row].index_select(0, index).select(1, kvHead);        // [n, D]
            var v = values[row].index_select(0, index).select(1, kvHead);      // [n, D]
            var p = (k.matmul(q) / Math.Sqrt(HeadDim)).softmax(0);             // [n]
            var expected = p.matmul(v);                                        // [D]
            TensorAssert.Close(expected, tensor(output), 1e-5, 1e-5, $"window {window}, pad {pad}, query at {qpos}");
        }
    }

    [Theory]
    [InlineData(8, 1)]
    [InlineData(24, 3)]
    [InlineData(64, 3)]
    [InlineData(128, 2)]
    public void A_group_of_query_heads_reads_its_kv_head_once_and_gets_each_heads_softmax(int headDim, int group)
    {
        using var scope = NewDisposeScope();
        manual_seed(5);
        var keys = randn(Batch, MaxLength, KvHeads, headDim);                  // [B, max, kvH, D]
        var values = randn(Batch, MaxLength, KvHeads, headDim);                // [B, max, kvH, D]
        var cache = KvPages.OverContiguous(Native.Pointer<float>(keys), Native.Pointer<float>(values), Batch, MaxLength, KvHeads, headDim,
            out _keyTable, out _valueTable);
        var scores = new float[group * MaxLength];
        var output = new float[group * headDim];
        const int row = 1, kvHead = 1, pad = 2;
        foreach (int qpos in new[] { 0, 5, LayerCache.PageTokens, MaxLength - 1 })
        {
            var q = randn(group, headDim);                                     // [G, D]
            fixed (float* s = scores, o = output)
                CacheAttention.QueryGroup(Native.Pointer<float>(q), group, cache, row, kvHead, qpos, pad, null, s, MaxLength, o, null, 0);

            var visible = Enumerable.Range(0, qpos + 1).Where(j => j >= pad || j == qpos).Select(j => (long)j).ToArray();
            var index = tensor(visible);                                       // [n]
            var k = keys[row].index_select(0, index).select(1, kvHead);        // [n, D]
            var v = values[row].index_select(0, index).select(1, kvHead);      // [n, D]
            var p = (q.matmul(k.t()) / Math.Sqrt(headDim)).softmax(1);         // [G, n]
            var expected = p.matmul(v);                                        // [G, D]
            TensorAssert.Close(expected, tensor(output).view(group, headDim), 1e-5, 1e-5, $"head dim {headDim}, group {group}, query at {qpos}");
        }
    }

    [Theory]
    [InlineData(false, 0)]
    [InlineData(false, 3)]
    [InlineData(true, 2)]
    public void An_alibi_term_joins_every_visible_score(bool bfloat16, int pad)
    {
        using var scope = NewDisposeScope();
        manual_seed(4);
        var keys = randn(Batch, MaxLength, KvHeads, HeadDim);                  // [B, max, kvH, D]
        var values = randn(Batch, MaxLength, KvHeads, HeadDim);                // [B, max, kvH, D]
        var cache = Over(keys, values);
        var term = new AlibiTerm(heads: 4, bfloat16, scale: bfloat16 ? 1 / Math.Sqrt(HeadDim) : 1.0);
        var scores = new float[MaxLength];
        var output = new float[HeadDim];
        const int row = 0, kvHead = 1, head = 2;
        foreach (int qpos in new[] { 0, 3, LayerCache.PageTokens + 1, MaxLength - 1 })
        {
            var q = randn(HeadDim);                                            // [D]
            fixed (float* s = scores, o = output)
                CacheAttention.Query(Native.Pointer<float>(q), cache, row, kvHead, qpos, pad, null, s, o, term, head);

            var visible = Enumerable.Range(0, qpos + 1).Where(j => j >= pad || j == qpos).ToArray();
            var index = tensor(visible.Select(j => (long)j).ToArray());        // [n]
            var bias = tensor(visible.Select(j => term.Bias(head, Math.Max(0, j - pad))).ToArray());   // [n]
            var k = keys[row].index_select(0, index).select(1, kvHead);        // [n, D]
            var v = values[row].index_select(0, index).select(1, kvHead);      // [n, D]
            var p = (k.matmul(q) / Math.Sqrt(HeadDim) + bias).softmax(0);      // [n]
            TensorAssert.Close(p.matmul(v), tensor(output), 1e-5, 1e-5, $"bf16 {bfloat16}, pad {pad}, query at {qpos}");
        }
    }

    [Fact]
    public void A_window_hides_keys_a_full_query_would_see()
    {
        using var scope = NewDisposeScope();
        manual_seed(5);
        var keys = randn(Batch, MaxLength, KvHeads, HeadDim);                  // [B, max, kvH, D]
        var values = randn(Batch, MaxLength, KvHeads, HeadDim);                // [B, max, kvH, D]
        var cache = Over(keys, values);
        var q = randn(HeadDim);                                                // [D]
        var scores = new float[MaxLength];
        float[] full = new float[HeadDim], windowed = new float[HeadDim];
        const int qpos = LayerCache.PageTokens + 4;
        fixed (float* s = scores, f = full, w = windowed)
        {
            CacheAttention.Query(Native.Pointer<float>(q), cache, 0, 0, qpos, 0, null, s, f);
            CacheAttention.Query(Native.Pointer<float>(q), cache, 0, 0, qpos, 0, 3, s, w);
        }
        Assert.True(TensorAssert.MaxAbsDiff(tensor(full), tensor(windowed)) > 1e-3, "a 3-token window must change the output");
    }
}
