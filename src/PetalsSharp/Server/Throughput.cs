using System.Diagnostics;
using PetalsSharp.Models;
using static TorchSharp.torch;

namespace PetalsSharp.Server;

/// <summary>What a server measured about itself and announces (Petals' inference/forward/network rps).</summary>
/// <param name="InferenceRps">Single-token steps per second through one block.</param>
/// <param name="ForwardRps">Forward tokens per second through one block.</param>
/// <param name="NetworkRps">Activations per second the network carries (an assumed 100 Mbit/s, as Petals without speedtest).</param>
/// <param name="Throughput">What the server offers: min(forward_rps / ((n+1)/2), network_rps), Petals' formula.</param>
public sealed record ThroughputInfo(double InferenceRps, double ForwardRps, double NetworkRps, double Throughput)
{
    /// <summary>Measures on the server's own blocks: a 64-token forward and a few single-token steps.</summary>
    public static ThroughputInfo Measure(LocalBlockStack stack)
    {
        int hidden = stack.Config.HiddenSize, blocks = stack.End - stack.Start;
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var x = randn(1, 64, hidden);
        stack.Forward(x);   // warm-up
        var sw = Stopwatch.StartNew();
        stack.Forward(x);
        double forwardRps = 64 * blocks / Math.Max(sw.Elapsed.TotalSeconds, 1e-6);
        using var session = (LocalBlockSession)stack.OpenSession(new SessionOptions(1, 16));
        var one = randn(1, 1, hidden);
        session.Step(one);
        sw.Restart();
        const int steps = 8;
        for (int i = 0; i < steps; i++) session.Step(one);
        double inferenceRps = steps * blocks / Math.Max(sw.Elapsed.TotalSeconds, 1e-6);
        return ForSpan(inferenceRps, forwardRps, 100e6 / (hidden * 16.0), blocks);
    }

    /// <summary>The per-block rates are what a machine can do; the offered throughput depends on the span length.</summary>
    public static ThroughputInfo ForSpan(double inferenceRps, double forwardRps, double networkRps, int blocks) =>
        new(inferenceRps, forwardRps, networkRps, Math.Min(forwardRps / ((blocks + 1) / 2.0), networkRps));

    /// <summary>The same machine serving <paramref name="blocks"/> blocks.</summary>
    public ThroughputInfo WithSpanLength(int blocks) => ForSpan(InferenceRps, ForwardRps, NetworkRps, blocks);

    /// <summary>An operator's number (<c>--throughput N</c>): announced as is, whatever the span.</summary>
    public static ThroughputInfo Fixed(double throughput) => new(throughput, throughput, throughput, throughput);
}
