using PetalsSharp.Server;
using Xunit;

namespace PetalsSharp.Tests.Balance;

public sealed class ThroughputCacheTests
{
    static ThroughputCache NewCache() =>
        new(Path.Combine(Directory.CreateTempSubdirectory("petals-tp").FullName, "sub", "throughput.json"));

    [Fact]
    public void A_miss_measures_and_stores_and_a_hit_does_not_measure()
    {
        var cache = NewCache();
        int measured = 0;
        ThroughputInfo Measure() { measured++; return ThroughputInfo.ForSpan(50, 400, 1000, 1); }

        var (first, hit1) = cache.GetOrMeasure("m@abc|float32|cpu", blocks: 3, remeasure: false, Measure);
        Assert.False(hit1);
        var (second, hit2) = cache.GetOrMeasure("m@abc|float32|cpu", blocks: 3, remeasure: false, Measure);
        Assert.True(hit2);
        Assert.Equal(1, measured);
        Assert.Equal(first, second);
        Assert.Equal(200, second.Throughput);   // forward 400 / ((3+1)/2)

        // Other keys (dtype, model) miss; eval re-measures.
        Assert.False(cache.GetOrMeasure("m@abc|bfloat16|cpu", 3, false, Measure).Hit);
        Assert.False(cache.GetOrMeasure("m@abc|float32|cpu", 3, remeasure: true, Measure).Hit);
        Assert.Equal(3, measured);
    }

    [Fact]
    public void Cached_rates_are_rebased_on_the_span_length()
    {
        var cache = NewCache();
        cache.Put("k", ThroughputInfo.ForSpan(50, 400, 1000, 7));
        Assert.Equal(400, cache.TryGet("k")!.WithSpanLength(1).Throughput);
        Assert.Equal(100, cache.TryGet("k")!.WithSpanLength(7).Throughput);
    }

    [Fact]
    public void A_corrupt_file_is_a_miss_and_is_replaced()
    {
        var cache = NewCache();
        cache.Put("k", ThroughputInfo.ForSpan(1, 2, 3, 1));
        File.WriteAllText(cache.Path, "{ not json");
        Assert.Null(cache.TryGet("k"));
        cache.Put("k", ThroughputInfo.ForSpan(1, 2, 3, 1));
        Assert.NotNull(cache.TryGet("k"));
    }

    [Fact]
    public void The_key_names_model_config_dtype_and_device()
    {
        var key = ThroughputCache.Key("llama-gqa", TestData.Path("llama-gqa"), "float32");
        Assert.StartsWith("llama-gqa@", key);
        Assert.Contains("|float32|cpu-", key);
    }
}
