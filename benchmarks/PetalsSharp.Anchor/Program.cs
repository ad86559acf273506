using LLama;
using LLama.Common;
using LLama.Native;
using PetalsSharp.Models;
using PetalsSharp.Models.Bench;
using static TorchSharp.torch;

// Our engine and llama.cpp (LLamaSharp) side by side in one process, alternating one run each: a 64-token prompt in
// one step, then 128 single-token steps with a greedy argmax, as `petals bench` and ../shared/bench/llamacpp do. The
// two sides of a pair run within about two seconds of each other, so a box whose speed changes every few tens of
// seconds gives ratios from the same seconds; separate processes put 10-20 s between the sides.
//
//   dotnet run -c Release --project benchmarks/PetalsSharp.Anchor -- --model DIR --gguf FILE [--dtype f32|bf16] [--pairs 30]
PetalsSharp.Runtime.Configure();
var opts = new Dictionary<string, string>();
for (int i = 0; i + 1 < args.Length; i += 2) opts[args[i].TrimStart('-')] = args[i + 1];
string Get(string key, string fallback) => opts.TryGetValue(key, out var v) ? v : fallback;
string dir = Get("model", "/tmp/petals-bench-llama-100m"), gguf = Get("gguf", "/tmp/ll-f32.gguf");
var dtype = Get("dtype", "f32") switch
{
    "f32" => ScalarType.Float32,
    "bf16" => ScalarType.BFloat16,
    "f16" => ScalarType.Float16,
    var d => throw new ArgumentException($"unknown dtype {d}"),
};
int pairs = int.Parse(Get("pairs", "30")), promptTokens = int.Parse(Get("prompt", "64")), newTokens = int.Parse(Get("new", "128"));
int threads = Environment.ProcessorCount;

using var lm = CausalLM.Load(dir, new ModelLoadOptions(dtype));
var blocks = (LocalBlockStack)lm.Blocks;
var options = new EngineBenchOptions(promptTokens, newTokens, 1);
(double Pp, double Tg) Ours()
{
    var (prefill, decode) = EngineBench.RunOnce(blocks, lm.Ends, options);
    return (promptTokens / prefill, newTokens / decode);
}

NativeLibraryConfig.All.WithLogCallback((level, msg) => { if (level >= LLamaLogLevel.Warning && msg.Trim().Length > 1) Console.Error.Write("[llama.cpp] " + msg); });
var mp = new ModelParams(gguf)
{
    ContextSize = 512, BatchSize = 512, UBatchSize = 512, Threads = threads, BatchThreads = threads, GpuLayerCount = 0,
};
using var weights = LLamaWeights.LoadFromFile(mp);
using var ctx = weights.CreateContext(mp);
var h = ctx.NativeHandle;
var rng = new Random(42);
var prompt = Enumerable.Range(0, promptTokens).Select(_ => (LLamaToken)rng.Next(259, 32000)).ToArray();
var batch = new LLamaBatch();
(double Pp, double Tg) Llama()
{
    h.MemoryClear(true);
    batch.Clear();
    batch.AddRange(prompt, 0, LLamaSeqId.Zero, true);
    var sw = System.Diagnostics.Stopwatch.StartNew();
    if (h.Decode(batch) != DecodeResult.Ok) throw new InvalidOperationException("llama.cpp prefill failed");
    h.Synchronize();
    double pp = promptTokens / sw.Elapsed.TotalSeconds;
    int token = ArgMax(h.GetLogitsIth(batch.TokenCount - 1));
    sw.Restart();
    for (int i = 0; i < newTokens; i++)
    {
        batch.Clear();
        batch.Add(token, promptTokens + i, LLamaSeqId.Zero, true);
        if (h.Decode(batch) != DecodeResult.Ok) throw new InvalidOperationException("llama.cpp decode failed");
        token = ArgMax(h.GetLogitsIth(0));
    }
    return (pp, newTokens / sw.Elapsed.TotalSeconds);
}

// Warm-ups as each side's own bench does them: ours one run and four prompts (tiered JIT), llama.cpp one run.
Ours();
for (int i = 0; i < 4; i++) EngineBench.RunOnce(blocks, lm.Ends, options with { NewTokens = 1 });
Llama();
Console.WriteLine($"ours {dir} ({dtype}, {EngineBench.Threads} threads) against llama.cpp {Path.GetFileName(gguf)} ({threads} threads); prompt {promptTokens}, new {newTokens}");
Console.WriteLine("| pair | ours pp | llama.cpp pp | ours tg | llama.cpp tg | pp ratio | tg ratio |");
Console.WriteLine("|---|---|---|---|---|---|---|");
var ppRatios = new List<double>();
var tgRatios = new List<double>();
for (int p = 1; p <= pairs; p++)
{
    // Alternate which side goes first, so neither always follows the other's cache and frequency state.
    (double Pp, double Tg) ours, llama;
    if (p % 2 == 1) { ours = Ours(); llama = Llama(); }
    else { llama = Llama(); ours = Ours(); }
    ppRatios.Add(ours.Pp / llama.Pp);
    tgRatios.Add(ours.Tg / llama.Tg);
    Console.WriteLine($"| {p} | {ours.Pp:F0} | {llama.Pp:F0} | {ours.Tg:F1} | {llama.Tg:F1} | {ppRatios[^1]:F3} | {tgRatios[^1]:F3} |");
}
Console.WriteLine($"prefill ours ÷ llama.cpp: median {Median(ppRatios):F3} [{string.Join(" ", ppRatios.Order().Select(r => r.ToString("F2")))}]");
Console.WriteLine($"decode ours ÷ llama.cpp: median {Median(tgRatios):F3} [{string.Join(" ", tgRatios.Order().Select(r => r.ToString("F2")))}]");
return 0;

static int ArgMax(Span<float> logits)
{
    int best = 0;
    for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
    return best;
}

static double Median(List<double> values)
{
    var sorted = values.Order().ToArray();
    int n = sorted.Length;
    return n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
}
